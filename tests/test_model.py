"""The MLP: shapes, the pinned parameter count, the original's initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmlp import model, train
from jaxmlp.config import Config


def _params(module: nnx.Module) -> nnx.State:
    return nnx.state(module, nnx.Param)


def test_default_model_has_the_original_shapes_and_185300_parameters():
    params = _params(model.MLP(rngs=nnx.Rngs(0)))
    shapes = [(k.shape, b.shape) for k, b in model.layer_params(params)]
    assert shapes == [((784, 200), (200,)), ((200, 100), (100,)), ((100, 60), (60,)),
                      ((60, 30), (30,)), ((30, 10), (10,))]
    assert model.num_params(params) == 185_300
    assert model.num_params(_params(model.from_config(Config(), jax.random.key(0)))) == 185_300


def test_logits_shape_and_uint8_equals_scaled_float():
    """The step scales uint8 images itself; the module takes (B, 28, 28) or (B, 784) floats."""
    mlp = model.MLP((64, 32), rngs=nnx.Rngs(0))
    state = train.TrainState.create(mlp, optax.sgd(0.1))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8))
    logits = train.forward(state, state.params, images, train=False)[0]
    assert logits.shape == (7, 10) and logits.dtype == jnp.float32
    as_float = mlp(images.astype(jnp.float32).reshape(7, 784) / 255.0)
    np.testing.assert_allclose(logits, as_float, rtol=1e-6, atol=1e-6)
    scaled = model.scale_images(images)
    assert scaled.dtype == jnp.float32 and float(scaled.max()) <= 1.0
    np.testing.assert_array_equal(scaled, images.astype(np.float32) / 255.0)


def test_init_is_truncated_normal_with_zero_biases():
    kernel, bias = model.layer_params(_params(model.MLP(init_stddev=0.1, rngs=nnx.Rngs(1))))[0]
    k = np.asarray(kernel)
    assert np.all(np.abs(k) <= 0.2 + 1e-6)  # cut at 2 stddev
    assert 0.07 < k.std() < 0.1  # truncation shrinks the stddev of N(0, 0.1) to about 0.088
    assert not np.any(np.asarray(bias))


def test_same_key_same_params_different_key_different_params():
    leaves = lambda key: jax.tree.leaves(_params(model.from_config(Config(), key)))
    a, b, c = leaves(jax.random.key(3)), leaves(jax.random.key(3)), leaves(jax.random.key(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
