"""The MLP: shapes, the pinned parameter count, the original's initialisation."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import model


def test_default_model_has_the_original_shapes_and_185300_parameters():
    graphdef, params = model.create(jax.random.key(0))
    shapes = [(k.shape, b.shape) for k, b in model.layer_params(params)]
    assert shapes == [((784, 200), (200,)), ((200, 100), (100,)), ((100, 60), (60,)),
                      ((60, 30), (30,)), ((30, 10), (10,))]
    assert model.num_params(params) == 185_300


def test_logits_shape_and_uint8_equals_scaled_float():
    graphdef, params = model.create(jax.random.key(0), (64, 32))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8))
    logits = model.apply(graphdef, params, images)
    assert logits.shape == (7, 10) and logits.dtype == jnp.float32
    as_float = model.apply(graphdef, params, images.astype(jnp.float32).reshape(7, 784) / 255.0)
    np.testing.assert_allclose(logits, as_float, rtol=1e-6, atol=1e-6)


def test_init_is_truncated_normal_with_zero_biases():
    _, params = model.create(jax.random.key(1), init_stddev=0.1)
    kernel, bias = model.layer_params(params)[0]
    k = np.asarray(kernel)
    assert np.all(np.abs(k) <= 0.2 + 1e-6)  # cut at 2 stddev
    assert 0.07 < k.std() < 0.1  # truncation shrinks the stddev of N(0, 0.1) to about 0.088
    assert not np.any(np.asarray(bias))


def test_same_key_same_params_different_key_different_params():
    a = jax.tree.leaves(model.create(jax.random.key(3))[1])
    b = jax.tree.leaves(model.create(jax.random.key(3))[1])
    c = jax.tree.leaves(model.create(jax.random.key(4))[1])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
