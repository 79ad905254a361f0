"""The history readers: layout, truncation, divergence, final and best (numpy only)."""

import subprocess
import sys

import numpy as np
from conftest import synthetic_history

from jaxmlp import history as hist


def test_layout_readers_for_single_models_and_ensembles():
    one, ens = synthetic_history(100, 50), synthetic_history(100, 50, members=3)
    assert not hist.is_ensemble(one) and hist.is_ensemble(ens)
    assert hist.num_members(one) == 1 and hist.num_members(ens) == 3
    steps, values = hist.series(ens, "test", "accuracy")
    np.testing.assert_array_equal(steps, [0, 50, 100])
    assert values.shape == (3, 3)
    assert hist.member_names(ens) == ["model 0", "model 1", "model 2"]
    assert hist.metric_names({**one, "test_top2": one["test_accuracy"]}) == ["loss", "accuracy", "top2"]
    assert hist.time_of("weight_percentiles") == "test" and hist.time_of("percentiles") is None


def test_to_numpy_drops_the_model_axis_only_from_shared_keys():
    h = synthetic_history(100, 50, members=2)
    h["test_step"] = np.stack([h["test_step"]] * 2)  # as a vmapped init broadcasts it
    out = hist.to_numpy(h)
    assert out["test_step"].shape == (3,) and out["test_loss"].shape == (2, 3)


def test_truncate_cuts_each_key_on_its_own_time_axis():
    h = hist.truncate(synthetic_history(100, 50, members=2), 50)
    assert h["train_loss"].shape == (2, 50) and h["test_loss"].shape == (2, 2)
    assert h["weight_percentiles"].shape[:2] == (2, 2) and h["percentiles"].shape == (7,)


def test_unreached_steps_never_count_and_divergence_is_the_first_bad_loss():
    h = synthetic_history(100, 50, members=2)
    h["test_loss"][:, 2] = np.nan  # the last evaluation has not run
    h["train_loss"][:, 51:] = np.nan
    assert hist.completed_steps(h) == 50
    assert hist.first_nonfinite_steps(h) == [None, None]
    h["train_loss"][1, 30:] = np.inf
    assert hist.first_nonfinite_steps(h) == [None, 31]


def test_best_never_picks_nan_and_final_is_the_last_evaluation_run():
    h = synthetic_history(100, 50, members=2)
    h["test_accuracy"][1] = [0.1, 0.9, np.nan]  # died after its second evaluation
    h["test_loss"][1, 2] = np.inf
    s = hist.summarize(h)
    assert s["best_test_accuracy"][1] == np.float32(0.9) and s["best_test_step"][1] == 50
    assert np.isnan(s["final_test_accuracy"][1]) and s["steps"] == 100
    single = hist.summarize(synthetic_history(100, 50))
    assert isinstance(single["final_test_accuracy"], float)


def test_history_and_records_import_without_jax():
    code = "import sys, jaxmlp.history, jaxmlp.records; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
