"""The host loop end to end on small data the tests make: determinism, compiles,
ensembles, the NaN guard, interrupt-and-resume and the run record."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxmlp import checkpoint, data, loop, run, train
from jaxmlp.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(hidden=(32, 16), batch_size=50, steps=120, eval_every=20, log_every=40)


def synthetic(n_train=1000, n_test=303, seed=0) -> data.Dataset:
    """Learnable digits: class c lights up rows 2c..2c+1. 303 test images: no batch divides it."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            x[y == c, 2 * c:2 * c + 2, :] += 150
        return x, y

    return data.Dataset(*make(n_train), *make(n_test), name="mnist", version="synthetic", source="test")


DATA = synthetic()


def _params(state, member=None):
    leaves = jax.tree.leaves(jax.device_get(state.params))
    return [np.asarray(x if member is None else x[member]) for x in leaves]


def test_same_seed_gives_bit_identical_history_and_params():
    c = Config(**SMALL)
    s1, h1 = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    s2, h2 = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    assert h1.keys() == h2.keys()
    for k in h1:
        np.testing.assert_array_equal(h1[k], h2[k], err_msg=k)
    for a, b in zip(_params(s1), _params(s2)):
        np.testing.assert_array_equal(a, b)
    s3, h3 = run.train_and_evaluate(c.replace(seed=1), dataset=DATA, quiet=True)
    assert not np.array_equal(h1["train_loss"], h3["train_loss"])
    # Learns, and every evaluation scored all 303 test images (accuracy is a multiple of 1/303).
    assert h1["test_accuracy"][-1] > 0.9
    np.testing.assert_allclose(h1["test_accuracy"] * 303, np.round(h1["test_accuracy"] * 303), atol=1e-3)


def test_compiles_do_not_grow_with_the_number_of_chunks():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
    counts = []
    for steps in (40, 160):  # 2 and 8 chunks; new shapes for the history, same per-chunk shapes
        compiles.clear()
        run.train_and_evaluate(Config(**{**SMALL, "steps": steps, "log_every": 40}), dataset=DATA, quiet=True)
        counts.append(len(compiles))
    assert counts[0] == counts[1], counts  # per run: a fixed set of programs, never one per chunk
    assert counts[0] <= 8


def test_ensemble_member_equals_single_run():
    c = Config(**SMALL, seeds=(0, 3), learning_rates=(0.1, 0.5))
    se, he = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    assert he["train_loss"].shape == (4, c.steps) and he["test_step"].shape == (c.num_evals,)
    for i, (seed, lr) in enumerate(c.members):
        s, h = run.train_and_evaluate(Config(**SMALL, seed=seed, learning_rate=lr), dataset=DATA, quiet=True)
        np.testing.assert_allclose(he["train_loss"][i], h["train_loss"], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(he["test_accuracy"][i], h["test_accuracy"], atol=1 / 303 + 1e-6)
        for a, b in zip(_params(se, i), _params(s)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_nonfinite_loss_stops_the_run_and_keeps_the_record(tmp_path):
    c = Config(**{**SMALL, "hidden": (200, 100, 60, 30), "learning_rate": 1e4})
    with pytest.raises(run.Diverged, match=r"not finite from step \d+"):
        run.train_and_evaluate(c, dataset=DATA, out_dir=str(tmp_path), quiet=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "step" in summary["error"]
    with np.load(tmp_path / "history.npz") as h:
        bad = int(summary["error"].split("from step ")[1].split()[0])
        assert len(h["train_loss"]) == summary["steps"] < c.steps  # saved up to the bad chunk
        assert not np.isfinite(h["train_loss"][bad - 1]) and np.all(np.isfinite(h["train_loss"][:bad - 1]))


def test_summary_holds_every_field(tmp_path):
    run.train_and_evaluate(Config(**SMALL), dataset=DATA, out_dir=str(tmp_path), quiet=True)
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_test_accuracy", "final_test_loss", "best_test_accuracy", "best_test_step",
                "steps", "config", "wall_seconds", "environment", "timings", "files", "placement"):
        assert key in s, key
    for name in ("jax", "jaxlib", "flax", "optax", "tensorflow_datasets", "backend", "device_kind",
                 "device_count"):
        assert s["environment"][name], name
    for name in ("startup_seconds", "compile_seconds", "train_seconds", "eval_seconds", "total_seconds"):
        assert s["timings"][name] >= 0, name
    assert Config.from_dict(s["config"]) == Config(**SMALL)
    for path in s["files"].values():
        assert os.path.exists(path), path
    with np.load(tmp_path / "history.npz") as h:
        assert h["train_loss"].shape == (120,) and h["test_accuracy"].shape == (7,)
        assert s["final_test_accuracy"] == pytest.approx(float(h["test_accuracy"][-1]))


_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_run import synthetic
    from jaxmlp import run
    from jaxmlp.config import Config
    config = Config(**{config!r})
    try:
        run.train_and_evaluate(config, dataset=synthetic(), out_dir={out!r}, resume={resume}, quiet=False)
    except run.Interrupted as e:
        print(e, flush=True)
        sys.exit(128 + e.signum)
""")


def _driver(config: dict, out: str, resume: bool) -> list[str]:
    code = _DRIVER.format(tests=os.path.join(ROOT, "tests"), config=config, out=out, resume=resume)
    return [sys.executable, "-u", "-c", code]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, signum):
    """A real signal mid-run; the resumed run ends bit-identical to one never stopped."""
    config = {**SMALL, "steps": 1000, "eval_every": 20, "log_every": 20, "checkpoint_every": 200}
    stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
    proc = subprocess.Popen(_driver(config, stopped, False), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until training is under way, then interrupt
        lines.append(line)
        if line.startswith("100:"):
            proc.send_signal(signum)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signum, out
    assert "--resume" in out
    summary = json.loads(open(os.path.join(stopped, "summary.json")).read())
    assert summary["status"] == "interrupted" and 100 <= summary["steps"] < 1000

    assert subprocess.run(_driver(config, stopped, True), capture_output=True, timeout=300).returncode == 0
    assert subprocess.run(_driver(config, whole, False), capture_output=True, timeout=300).returncode == 0
    with np.load(os.path.join(stopped, "history.npz")) as a, np.load(os.path.join(whole, "history.npz")) as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = Config(**config)
    states = []
    for d in (stopped, whole):
        fresh, hist0, _ = loop.init_run(c, 1000)
        with checkpoint.manager(d) as m:
            assert m.latest_step() == 1000
            states.append(checkpoint.restore(m, fresh, hist0)[0])
    for x, y in zip(_params(states[0]), _params(states[1])):
        np.testing.assert_array_equal(x, y)


def test_unwritable_out_fails_before_any_data_or_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(run.records.RecordError):
        run.train_and_evaluate(Config(**SMALL), out_dir=str(blocker / "run"), quiet=True)
