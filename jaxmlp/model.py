"""The MLP family of Görner's ladder, as a Flax NNX module (forward pass only).

Any ``nnx.Module`` that maps (B, 28, 28) float images in [0, 1] to (B, 10)
logits trains through jaxmlp; this one covers the talk's rungs: softmax
regression (no hidden layer), sigmoid or ReLU hidden layers, a bias init, and
dropout after each hidden layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

IMAGE_SHAPE = (28, 28)
NUM_INPUTS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 784
NUM_CLASSES = 10
_ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}


class MLP(nnx.Module):
    """784 -> hidden[0] -> ... -> hidden[-1] -> 10: activation (and dropout) between layers.

    Weights ~ N(0, init_stddev) truncated at 2 stddev (zeros if 0), hidden biases
    ``bias_init``, output bias 0, as in the talk's programs.
    """

    def __init__(self, hidden=(200, 100, 60, 30), *, activation: str = "relu",
                 init_stddev: float = 0.1, bias_init: float = 0.0, dropout: float = 0.0,
                 in_features: int = NUM_INPUTS, num_classes: int = NUM_CLASSES, rngs: nnx.Rngs):
        widths = (in_features, *hidden, num_classes)
        kernel_init = (jax.nn.initializers.truncated_normal(stddev=init_stddev, lower=-2.0, upper=2.0)
                       if init_stddev > 0 else jax.nn.initializers.zeros)
        self.layers = nnx.List([
            nnx.Linear(n_in, n_out, kernel_init=kernel_init, rngs=rngs,
                       bias_init=jax.nn.initializers.constant(bias_init if i < len(hidden) else 0.0))
            for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
        ])
        self.activation = activation
        # One dropout stream; the train step reseeds it from the state's key every step.
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, images: jax.Array) -> jax.Array:
        """images (B, 28, 28) or (B, 784), float -> logits (B, 10)."""
        x = images.reshape(images.shape[0], -1)
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.layers[-1](x)


def from_config(config, key: jax.Array) -> MLP:
    """The MLP a ``Config`` describes, its parameters drawn from ``key``."""
    return MLP(config.hidden, activation=config.activation, init_stddev=config.init_stddev,
               bias_init=config.bias_init, dropout=config.dropout,
               rngs=nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1)))


def layer_params(params: nnx.State) -> list[tuple[jax.Array, jax.Array]]:
    """[(kernel (n_in, n_out), bias (n_out,)), ...] of every ``nnx.Linear`` in ``params``,
    in the order the module defines them (input to output for the MLP)."""
    flat = nnx.to_flat_state(params)
    kernels = {path[:-1]: v for path, v in flat if path[-1] == "kernel"}
    biases = {path[:-1]: v for path, v in flat if path[-1] == "bias"}
    return [(_value(k), _value(biases[p])) for p, k in kernels.items() if p in biases
]


def _value(v):
    return v[...] if hasattr(v, "__getitem__") and not isinstance(v, jax.Array) else v


def num_params(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def scale_images(images: jax.Array) -> jax.Array:
    """uint8 in [0, 255] -> float32 in [0, 1]; float images pass through as float32.

    Scaling inside the compiled step lets training images stay on the device as
    uint8 (4x smaller).
    """
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) * (1.0 / 255.0)
    return images.astype(jnp.float32)
