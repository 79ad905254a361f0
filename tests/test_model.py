"""The MLP: shapes, the pinned parameter count, the original's initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmlp import model
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


def test_logits_shape_and_the_mlp_scales_uint8_itself():
    """uint8 pixels become [0, 1] inside the MLP; float images are taken as they are."""
    mlp = model.MLP((64, 32), rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8))
    logits = mlp(images)
    assert logits.shape == (7, 10) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, mlp(images.astype(jnp.float32).reshape(7, 784) / 255.0),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits, mlp(images.astype(jnp.float32)))  # floats are not rescaled


def test_other_shapes_and_class_counts():
    rgb = model.from_config(Config(hidden=(8,)), jax.random.key(0), image_shape=(8, 8, 3), num_classes=5)
    assert rgb(jnp.zeros((2, 8, 8, 3), jnp.uint8)).shape == (2, 5)


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
