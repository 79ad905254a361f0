"""Histories: fixed-shape pytrees filled by pure functions, and the host-side helpers."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import history as hist
from jaxmlp import model


def _filled(steps=6, every=2, seed=0):
    rng = np.random.default_rng(seed)
    h = hist.empty(steps, every, 5)
    _, params = model.create(jax.random.key(seed), (8, 8, 8, 8))
    h = hist.write_eval(h, 0, {"loss": jnp.float32(2.3), "accuracy": jnp.float32(0.1)}, params)
    for chunk in range(steps // every):
        m = {"loss": jnp.asarray(rng.random(every), jnp.float32),
             "accuracy": jnp.asarray(rng.random(every), jnp.float32)}
        h = hist.write_train(h, chunk * every, m)
        h = hist.write_eval(h, chunk + 1, {"loss": jnp.float32(1.0 / (chunk + 1)),
                                           "accuracy": jnp.float32([0.5, 0.9, 0.7][chunk])}, params)
    return h


def test_empty_has_fixed_shapes_and_step_numbers():
    h = hist.empty(10, 5, 3)
    assert h["train_loss"].shape == (10,) and h["test_accuracy"].shape == (3,)
    assert h["weight_percentiles"].shape == (3, 3, len(hist.PERCENTILES))
    assert list(h["train_step"]) == list(range(1, 11)) and list(h["test_step"]) == [0, 5, 10]
    assert np.all(np.isnan(h["train_loss"]))


def test_writes_are_pure_and_jittable():
    h = hist.empty(4, 2, 5)
    m = {"loss": jnp.asarray([1.0, 2.0]), "accuracy": jnp.asarray([0.5, 0.25])}
    out = jax.jit(hist.write_train)(h, jnp.int32(2), m)
    assert np.all(np.isnan(h["train_loss"]))  # the input is untouched
    np.testing.assert_array_equal(out["train_loss"], [np.nan, np.nan, 1.0, 2.0])


def test_percentiles_match_numpy():
    _, params = model.create(jax.random.key(0), (16, 8))  # 784*16 = 12,544 values: exact
    w, b = hist.param_percentiles(params)
    k0, b0 = model.layer_params(params)[0]
    np.testing.assert_allclose(w[0], np.percentile(np.asarray(k0), hist.PERCENTILES), rtol=1e-5)
    assert w.shape == b.shape == (3, len(hist.PERCENTILES))
    np.testing.assert_array_equal(b, 0.0)  # zero-initialised biases


def test_percentiles_of_a_big_layer_are_close_and_keep_the_extremes():
    _, params = model.create(jax.random.key(0))  # 156,800 first-layer weights: sampled
    w, _ = hist.param_percentiles(params)
    k0 = np.asarray(model.layer_params(params)[0][0])
    exact = np.percentile(k0, hist.PERCENTILES)
    assert w[0, 0] == k0.min() and w[0, -1] == k0.max()
    np.testing.assert_allclose(w[0], exact, atol=0.03 * 0.1)  # within 3% of the init stddev


def test_summary_truncate_and_concat():
    h = hist.to_numpy(_filled())
    s = hist.summarize(h)
    assert s["steps"] == 6
    assert s["final_test_accuracy"] == np.float32(0.7).item()
    assert (s["best_test_accuracy"], s["best_test_step"]) == (np.float32(0.9).item(), 4)
    first = hist.truncate(h, 4)
    assert first["train_loss"].shape == (4,) and list(first["test_step"]) == [0, 2, 4]
    rest = {k: (v if k == "percentiles" else v[4:] if k.startswith("train_") else
                v[3:]) for k, v in h.items()}
    joined = hist.concat(first, rest)
    for k in h:
        np.testing.assert_array_equal(joined[k], h[k])


def test_partial_history_counts_only_completed_steps():
    h = hist.to_numpy(_filled())
    h["test_accuracy"][2:] = np.nan
    h["train_loss"][3] = np.inf
    assert hist.completed_steps(h) == 2
    assert hist.first_nonfinite_step(h) is None  # step 4 was not completed
    h["train_loss"][1] = np.nan
    assert hist.first_nonfinite_step(h) == 2
