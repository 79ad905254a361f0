"""The MLP family of Görner's ladder as a Flax NNX module (forward pass only).

Any ``nnx.Module`` that maps a batch of images, as the data holds them, to logits
(B, classes) trains through jaxmlp. This one covers the talk's rungs: softmax
regression (no hidden layer), sigmoid or ReLU hidden layers, a bias init, and
dropout after each hidden layer. It scales its own input: uint8 pixels in
[0, 255] become floats in [0, 1]; float images are taken as they are.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


class MLP(nnx.Module):
    """in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes, activation between layers.

    Weights ~ N(0, init_stddev) truncated at 2 stddev (zeros if 0), hidden biases
    ``bias_init``, output bias 0, as in the talk's programs.
    """

    def __init__(self, hidden=(200, 100, 60, 30), *, activation: str = "relu",
                 init_stddev: float = 0.1, bias_init: float = 0.0, dropout: float = 0.0,
                 in_features: int = 784, num_classes: int = 10, rngs: nnx.Rngs):
        widths = (in_features, *hidden, num_classes)
        kernel_init = (jax.nn.initializers.truncated_normal(stddev=init_stddev, lower=-2.0, upper=2.0)
                       if init_stddev > 0 else jax.nn.initializers.zeros)
        self.layers = nnx.List([
            nnx.Linear(n_in, n_out, kernel_init=kernel_init, rngs=rngs,
                       bias_init=jax.nn.initializers.constant(bias_init if i < len(hidden) else 0.0))
            for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
        ])
        self.activation = activation
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, images: jax.Array) -> jax.Array:
        """images (B, ...) uint8 or float -> logits (B, num_classes)."""
        x = images.reshape(images.shape[0], -1)
        x = x.astype(jnp.float32) * (1 / 255) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.layers[-1](x)


def from_config(config, key: jax.Array, *, image_shape=(28, 28), num_classes: int = 10) -> MLP:
    """The MLP a ``Config`` describes, its parameters drawn from ``key``."""
    return MLP(config.hidden, activation=config.activation, init_stddev=config.init_stddev,
               bias_init=config.bias_init, dropout=config.dropout,
               in_features=math.prod(image_shape), num_classes=num_classes,
               rngs=nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1)))


def layer_params(params: nnx.State) -> list[tuple[jax.Array, jax.Array]]:
    """[(kernel, bias), ...] of every layer in ``params`` that has both (Linear, Conv, ...),
    in the order the module defines them."""
    flat = nnx.to_flat_state(params)
    kernels = {path[:-1]: v for path, v in flat if path[-1] == "kernel"}
    biases = {path[:-1]: v for path, v in flat if path[-1] == "bias"}
    return [(_value(k), _value(biases[p])) for p, k in kernels.items() if p in biases]


def _value(v):
    return v[...] if isinstance(v, nnx.Variable) else v


def num_params(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
