"""Histories: fixed-shape pytrees filled by pure functions, and the host-side helpers."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from conftest import child_env, synthetic_history
from jaxmlp import history as hist
from jaxmlp import loop, model


def _params(seed: int, hidden=(200, 100, 60, 30)) -> nnx.State:
    return nnx.state(model.MLP(hidden, rngs=nnx.Rngs(params=jax.random.key(seed))), nnx.Param)


def _filled(steps=6, every=2, seed=0):
    rng = np.random.default_rng(seed)
    h = loop.empty_history(steps, every, 5)
    params = _params(seed, (8, 8, 8, 8))
    h = loop.write_eval(h, 0, {"loss": jnp.float32(2.3), "accuracy": jnp.float32(0.1)}, params)
    for chunk in range(steps // every):
        m = {"loss": jnp.asarray(rng.random(every), jnp.float32),
             "accuracy": jnp.asarray(rng.random(every), jnp.float32)}
        h = loop.write_train(h, chunk * every, m)
        h = loop.write_eval(h, chunk + 1, {"loss": jnp.float32(1.0 / (chunk + 1)),
                                           "accuracy": jnp.float32([0.5, 0.9, 0.7][chunk])}, params)
    return h


def test_empty_has_fixed_shapes_and_step_numbers():
    h = loop.empty_history(10, 5, 3)
    assert h["train_loss"].shape == (10,) and h["test_accuracy"].shape == (3,)
    assert h["weight_percentiles"].shape == (3, 3, len(hist.PERCENTILES))
    assert list(h["train_step"]) == list(range(1, 11)) and list(h["test_step"]) == [0, 5, 10]
    assert np.all(np.isnan(h["train_loss"]))


def test_writes_are_pure_and_jittable():
    h = loop.empty_history(4, 2, 5)
    m = {"loss": jnp.asarray([1.0, 2.0]), "accuracy": jnp.asarray([0.5, 0.25])}
    out = jax.jit(loop.write_train)(h, jnp.int32(2), m)
    assert np.all(np.isnan(h["train_loss"]))  # the input is untouched
    np.testing.assert_array_equal(out["train_loss"], [np.nan, np.nan, 1.0, 2.0])


def test_percentiles_match_numpy():
    params = _params(0, (4, 8))  # 784*4 = 3,136 values <= loop.MAX_SAMPLES: exact
    w, b = loop.param_percentiles(params)
    k0, b0 = model.layer_params(params)[0]
    np.testing.assert_allclose(w[0], np.percentile(np.asarray(k0), hist.PERCENTILES), rtol=1e-5)
    assert w.shape == b.shape == (3, len(hist.PERCENTILES))
    np.testing.assert_array_equal(b, 0.0)  # zero-initialised biases


def test_sort_floats_is_numpys_sort():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 1000), rng.normal(0, 1e-30, 10), -np.logspace(-40, 38, 30),
                        np.logspace(-40, 38, 30), [0.0, -0.0, 1.0, -1.0, 1.0]]).astype(np.float32)
    rng.shuffle(x)
    got = np.asarray(jax.jit(loop.sort_floats)(x))
    np.testing.assert_array_equal(got, np.sort(x))
    assert got.dtype == np.float32


def test_percentiles_of_a_big_layer_are_close_and_keep_the_extremes():
    params = _params(0)  # 156,800 first-layer weights: sampled
    w, _ = loop.param_percentiles(params)
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
    h["test_loss"][2:] = np.nan  # NaN: not run yet (a run that diverged writes +inf)
    h["test_accuracy"][2:] = np.nan
    h["train_loss"][3] = np.inf
    assert hist.completed_steps(h) == 2
    assert hist.first_nonfinite_step(h) is None  # step 4 was not completed
    h["train_loss"][1] = np.nan
    assert hist.first_nonfinite_step(h) == 2


# --- the readers, on small histories written out by hand ------------------------------


def _history(train_loss, test_loss, test_accuracy=None, every=2) -> dict:
    """T = len(train_loss[-1]) steps, an evaluation every ``every``; (K, ...) arrays make an ensemble."""
    train_loss, test_loss = np.asarray(train_loss, np.float32), np.asarray(test_loss, np.float32)
    t, e = train_loss.shape[-1], test_loss.shape[-1]
    acc = np.full(test_loss.shape, 0.5) if test_accuracy is None else test_accuracy
    acc = np.asarray(acc, np.float32)
    return {"train_step": np.arange(1, t + 1, dtype=np.int32), "train_loss": train_loss,
            "train_accuracy": np.full(train_loss.shape, 0.5, np.float32),
            "test_step": np.arange(e, dtype=np.int32) * every, "test_loss": test_loss, "test_accuracy": acc}


NAN = np.nan


def test_first_nonfinite_step_is_the_earlier_of_train_and_test_loss():
    fine = _history([1, 1, 1, 1, 1, 1], [2, 1, 1, 1])
    assert hist.first_nonfinite_step(fine) is None and hist.first_nonfinite_steps(fine) == [None]
    # Only the test loss: the evaluation's step (a last update that blew up is caught too).
    # jaxmlp writes a diverged model's losses as +inf; NaN means "not run yet".
    assert hist.first_nonfinite_step(_history([1, 1, 1, 1, 1, 1], [2, 1, np.inf, np.inf])) == 4
    assert hist.first_nonfinite_step(_history([1, 1, 1, 1, 1, 1], [2, 1, NAN, NAN])) is None
    assert hist.first_nonfinite_step(_history([1, 1, 1, 1, 1, 1], [2, 1, 1, np.inf])) == 6
    # Only the train loss: that step.
    assert hist.first_nonfinite_step(_history([1, 1, np.inf, NAN, NAN, NAN], [2, 1, 1, 1])) == 3
    # Both: whichever comes first.
    assert hist.first_nonfinite_step(_history([1, 1, 1, 1, np.inf, np.inf], [2, np.inf, np.inf, np.inf])) == 2
    assert hist.first_nonfinite_step(_history([1, 1, np.inf, np.inf, np.inf, np.inf], [2, 1, np.inf, np.inf])) == 3


def test_first_nonfinite_steps_are_per_member():
    # Members: fine; train loss from step 5 (and so the test loss at 6); test loss only, at step 2.
    h = _history([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, NAN, NAN], [1, 1, 1, 1, 1, 1]],
                 [[2, 1, 1, 1], [2, 1, 1, NAN], [2, NAN, 1, 1]])
    assert hist.first_nonfinite_steps(h) == [None, 5, 2]
    assert hist.first_nonfinite_step(h) == 2
    assert hist.member_status(h) == ["finite", "diverged at step 5", "diverged at step 2"]
    # test_plot.py checks the figures mark exactly these steps.


def test_unreached_steps_never_count_as_non_finite():
    # Evaluated up to step 2 only: the rest is the NaN padding of a run still going.
    h = _history([1, 1, NAN, np.inf, NAN, NAN], [2, 1, NAN, NAN], test_accuracy=[0.1, 0.5, NAN, NAN])
    assert hist.completed_steps(h) == 2 and hist.first_nonfinite_steps(h) == [None]
    nothing = _history([NAN] * 6, [NAN] * 4, test_accuracy=[NAN] * 4)
    assert hist.completed_steps(nothing) == 0 and hist.first_nonfinite_step(nothing) is None
    (r,) = hist.final_and_best(nothing)
    assert (r.final_step, r.best_step) == (0, 0)
    assert np.isnan([r.final_accuracy, r.final_loss, r.best_accuracy]).all()


def test_final_and_best_are_per_member():
    h = _history(np.ones((2, 6)), [[2.0, 1.0, 0.5, 0.6], [2.0, 0.4, 0.9, NAN]],
                 test_accuracy=[[0.1, 0.6, 0.9, 0.8], [0.1, 0.95, 0.7, 0.5]])
    first, second = hist.final_and_best(h)
    f32 = lambda x: np.float32(x).item()  # noqa: E731
    assert first == hist.FinalBest(6, f32(0.8), f32(0.6), 4, f32(0.9))
    assert second[:2] == (6, f32(0.5)) and np.isnan(second.final_loss) and second[3:] == (2, f32(0.95))
    s = hist.summarize(h)
    assert s["final_test_accuracy"] == [f32(0.8), f32(0.5)] and s["best_test_step"] == [4, 2]
    single = hist.summarize({k: v[0] if v.ndim == 2 else v for k, v in h.items()})
    assert (single["final_test_accuracy"], single["best_test_step"], single["steps"]) == (f32(0.8), 4, 6)


def test_series_gives_members_first_for_single_models_and_ensembles():
    single = _history([1, 2, 3, 4], [5, 6, 7])
    steps, values = hist.series(single, "train", "loss")
    assert steps.tolist() == [1, 2, 3, 4] and values.shape == (1, 4) and values.dtype == np.float64
    ensemble = _history(np.ones((3, 4)), np.ones((3, 3)))
    steps, values = hist.series(ensemble, "test", "loss")
    assert steps.tolist() == [0, 2, 4] and values.shape == (3, 3)
    assert hist.num_members(single) == 1 and hist.num_members(ensemble) == 3
    assert hist.member_names(ensemble) == ["model 0", "model 1", "model 2"]
    assert hist.member_names({**ensemble, "members": np.array(["a", "b", "c"])}) == ["a", "b", "c"]
    del single["train_step"]  # minimal histories count train steps from 1
    assert hist.series(single, "train", "loss")[0].tolist() == [1, 2, 3, 4]


def test_the_schema_drives_truncate_concat_and_to_numpy(monkeypatch):
    # New keys: one per step, one per evaluation and layer. Nothing but the schema names them.
    monkeypatch.setitem(hist.SCHEMA, "train_grad_norm", hist.Key((hist.STEP,)))
    monkeypatch.setitem(hist.SCHEMA, "test_layer_norm", hist.Key((hist.EVAL, "L")))
    k, t, e, layers = 2, 6, 4, 3
    h = _history(np.ones((k, t)), np.ones((k, e)))
    h["train_grad_norm"] = np.arange(k * t, dtype=np.float32).reshape(k, t)
    h["test_layer_norm"] = np.arange(k * e * layers, dtype=np.float32).reshape(k, e, layers)
    h["notes"] = np.array(["kept as is"])  # outside the schema: passed through
    h["test_step"] = np.broadcast_to(h["test_step"], (k, e))  # as vmap leaves a shared key
    full = hist.to_numpy(h)
    assert full["test_step"].tolist() == [0, 2, 4, 6] and full["train_step"].shape == (t,)

    first = hist.truncate(h, 4)  # steps 1..4, evaluations at 0, 2, 4
    assert first["train_grad_norm"].shape == (k, 4) and first["test_layer_norm"].shape == (k, 3, layers)
    np.testing.assert_array_equal(first["train_grad_norm"], full["train_grad_norm"][:, :4])
    np.testing.assert_array_equal(first["test_layer_norm"], full["test_layer_norm"][:, :3])
    assert first["test_step"].tolist() == [0, 2, 4] and first["notes"].tolist() == ["kept as is"]

    rest = {"train_step": full["train_step"][4:], "test_step": full["test_step"][3:], "notes": full["notes"]}
    rest.update({key: full[key][:, 4:] for key in ("train_loss", "train_accuracy", "train_grad_norm")})
    rest.update({key: full[key][:, 3:] for key in ("test_loss", "test_accuracy", "test_layer_norm")})
    joined = hist.concat(first, rest)
    assert joined.keys() == full.keys()
    for key, v in full.items():
        np.testing.assert_array_equal(joined[key], v, err_msg=key)


def test_required_keys_come_from_the_schema():
    assert hist.REQUIRED == tuple(k for k, key in hist.SCHEMA.items() if key.required)
    assert {k for k, key in hist.SCHEMA.items() if key.shared} == {"train_step", "test_step", "percentiles",
                                                                    "members"}
    assert hist.SCHEMA["weight_percentiles"].time_axis == -3 and hist.SCHEMA["train_loss"].time_axis == -1


def test_history_and_plot_import_without_jax():
    """And ``jaxmlp.config``: scripts check their flags before paying for JAX."""
    code = ("import sys, jaxmlp.config, jaxmlp.history, jaxmlp.plot; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'optax'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=child_env(), timeout=120)
    assert done.stdout.strip() == "[]", "importing jaxmlp.config, .history or .plot pulled in " + done.stdout


def test_a_diverged_members_best_is_its_best_evaluation_before_it_died():
    """A dead member's accuracies are NaN from its first bad evaluation on (``record``'s
    mark). Catches a best picked by a plain argmax, which returns the first NaN: a NaN best
    accuracy at the step it died, in summary.json and the ladder's best column."""
    h = synthetic_history(steps=100, eval_every=25, members=2)
    h["test_accuracy"][0, 2:] = np.nan
    h["test_loss"][0, 2:] = np.inf
    dead, alive = hist.final_and_best(h)
    assert dead.best_step == 25 and dead.best_accuracy == float(h["test_accuracy"][0, 1])
    assert np.isnan(dead.final_accuracy) and dead.final_step == 100
    assert alive.best_accuracy == float(np.max(h["test_accuracy"][1]))
