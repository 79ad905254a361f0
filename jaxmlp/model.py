"""The model: a Flax NNX multilayer perceptron, forward pass only.

jaxmlp builds the module once, splits it into a static graph definition and a
pytree of parameters (``nnx.split``), and merges them back inside jitted code
(``apply``). The training core therefore only ever sees plain pytrees, so the
same step runs under ``jit``, ``lax.scan``, ``vmap`` and sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

IMAGE_SHAPE = (28, 28)
NUM_INPUTS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 784
NUM_CLASSES = 10


class MLP(nnx.Module):
    """784 -> hidden[0] -> ... -> hidden[-1] -> 10, ReLU between layers, logits out."""

    def __init__(self, hidden=(200, 100, 60, 30), *, init_stddev: float = 0.1,
                 in_features: int = NUM_INPUTS, num_classes: int = NUM_CLASSES, rngs: nnx.Rngs):
        widths = (in_features, *hidden, num_classes)
        # As in the original: weights ~ N(0, stddev) truncated at 2 stddev, biases zero.
        kernel_init = jax.nn.initializers.truncated_normal(stddev=init_stddev, lower=-2.0, upper=2.0)
        self.layers = nnx.List([
            nnx.Linear(n_in, n_out, kernel_init=kernel_init,
                       bias_init=jax.nn.initializers.zeros, rngs=rngs)
            for n_in, n_out in zip(widths[:-1], widths[1:])
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, 784) float -> logits (B, 10)."""
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def create(key: jax.Array, hidden=(200, 100, 60, 30), *, init_stddev: float = 0.1):
    """Build an MLP from ``key``; returns ``(graphdef, params)`` (params: an ``nnx.State``)."""
    model = MLP(hidden, init_stddev=init_stddev, rngs=nnx.Rngs(params=key))
    return nnx.split(model, nnx.Param)


def to_inputs(images: jax.Array) -> jax.Array:
    """(B, 28, 28) uint8 in [0, 255], or float already in [0, 1] -> (B, 784) float32."""
    x = images.reshape(images.shape[0], -1)
    if x.dtype == jnp.uint8:
        # Scaling inside the compiled step lets the data stay on the device as uint8 (4x smaller).
        return x.astype(jnp.float32) * (1.0 / 255.0)
    return x.astype(jnp.float32)


def apply(graphdef: nnx.GraphDef, params: nnx.State, images: jax.Array) -> jax.Array:
    """Pure forward pass: images (B, 28, 28) or (B, 784) -> logits (B, 10)."""
    return nnx.merge(graphdef, params)(to_inputs(images))


def layer_params(params: nnx.State) -> list[tuple[jax.Array, jax.Array]]:
    """[(kernel (n_in, n_out), bias (n_out,)), ...] for each dense layer, input to output."""
    layers = params["layers"]
    return [(layers[i]["kernel"][...], layers[i]["bias"][...]) for i in sorted(layers)]


def num_params(params: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
