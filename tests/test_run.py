"""The host loop end to end on small data the tests make: determinism, compiles,
ensembles, the divergence guard, interrupt-and-resume and the run record.

Each test names, in its docstring or a comment, the wrong-but-plausible
implementation it exists to catch."""

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, child_env, device_data, first_nonfinite_by_replay, synthetic

from jaxmlp import checkpoint, data, loop, records, run
from jaxmlp import history as hist
from jaxmlp.config import Config
from jaxmlp.report import Reporter

SMALL = dict(hidden=(32, 16), batch_size=50, steps=120, eval_every=20, log_every=40)
DATA = synthetic()
N_TRAIN = len(DATA.train_labels)


def _params(state, member=None):
    leaves = jax.tree.leaves(jax.device_get(state.params))
    return [np.asarray(x if member is None else x[member]) for x in leaves]


def _assert_same_history(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_same_seed_gives_bit_identical_history_and_params():
    c = Config(**SMALL)
    r1 = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    r2 = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    assert isinstance(r1, run.Result)
    _assert_same_history(r1.history, r2.history)
    for a, b in zip(_params(r1.state), _params(r2.state)):
        np.testing.assert_array_equal(a, b)
    r3 = run.train_and_evaluate(c.replace(seed=1), dataset=DATA, quiet=True)
    assert not np.array_equal(r1.history["train_loss"], r3.history["train_loss"])
    # Learns, and every evaluation scored all 303 test images (accuracy is a multiple of 1/303).
    h1 = r1.history
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


EARLY = 20
"""Steps over which ensemble member i and the single run agree to float rounding (measured:
relative difference <= 2.4e-7 over the first 20 steps on this data, a few 1e-6 by step 50,
~1e-5 by step 120: batched and single matmuls round differently, and SGD amplifies it)."""


def test_ensemble_member_matches_the_single_run_early_then_in_distribution():
    """Member i starts exactly as the single run with its seed and learning rate (same
    initial parameters, same data order), so the first steps agree to float rounding;
    later the two only agree in distribution (same accuracy reached), which is all this
    claims. Catches: members keyed by their index rather than their seed, a shared data
    order where seeds differ, or the wrong learning rate on a member (all of which
    differ from the first step by far more than 1e-6)."""
    c = Config(**SMALL, seeds=(0, 3), learning_rates=(0.1, 0.5))
    ens = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    he = ens.history
    assert he["train_loss"].shape == (4, c.steps) and he["test_step"].shape == (c.num_evals,)
    start_e, _, orders_e = loop.init_run(c, N_TRAIN)
    for i, (seed, lr) in enumerate(c.members):
        single = Config(**SMALL, seed=seed, learning_rate=lr)
        start_1, _, orders_1 = loop.init_run(single, N_TRAIN)
        for a, b in zip(_params(start_e, i), _params(start_1)):
            np.testing.assert_array_equal(a, b)  # the same initial model, bit for bit
        np.testing.assert_array_equal(np.asarray(orders_e[i]), np.asarray(orders_1))
        h = run.train_and_evaluate(single, dataset=DATA, quiet=True).history
        assert he["test_accuracy"][i][0] == h["test_accuracy"][0]
        np.testing.assert_allclose(he["train_loss"][i][:EARLY], h["train_loss"][:EARLY], rtol=1e-6, atol=0)
        # Later: in distribution only. Both learn, to about the same test accuracy.
        final_e, final_1 = he["test_accuracy"][i][-1], h["test_accuracy"][-1]
        assert final_1 > 0.9 and abs(final_e - final_1) <= 0.05, (i, final_e, final_1)


def test_a_single_model_that_diverges_ends_the_run_and_keeps_the_record(tmp_path):
    """lr 1e6 overflows at step 3. Catches: a single model that trains on frozen (or on NaN)
    to the last step, a message without the step, a record not saved, and a final
    checkpoint written after the divergence."""
    c = Config(**{**SMALL, "learning_rate": 1e6, "checkpoint_every": 20})
    with pytest.raises(run.Diverged) as e:
        run.train_and_evaluate(c, dataset=DATA, out_dir=str(tmp_path), quiet=True)
    message = str(e.value)
    assert "\n" not in message and "learning rate 1e+06" in message and str(tmp_path) in message
    bad = int(re.search(r"non-finite at step (\d+)", message).group(1))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["members"][0]["status"] == "diverged"
    assert summary["members"][0]["first_nonfinite_step"] == bad
    with np.load(tmp_path / "history.npz") as h:
        assert len(h["train_loss"]) == summary["steps"] == c.eval_every < c.steps  # up to the bad chunk
        # Where a step-by-step replay without the guard first sees a non-finite loss.
        assert bad == first_nonfinite_by_replay(c, DATA)
        assert np.all(np.isfinite(h["train_loss"][:bad - 1]))
        assert np.all(h["train_loss"][bad - 1:] == np.inf)  # run, and diverged: +inf, not "not run"
        assert np.isnan(h["test_accuracy"][-1])
        assert hist.first_nonfinite_steps(dict(h)) == [bad]
    steps = [n for n in os.listdir(tmp_path / "checkpoints")] if (tmp_path / "checkpoints").exists() else []
    assert not [n for n in steps if n.isdigit()], steps  # no checkpoint of a diverged run


_device_data = device_data


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_nan_params_at_a_chunks_last_step_freeze_the_member_at_the_chunk_start(tmp_path, ensemble):
    """Parameters turn NaN at the chunk's last step while every loss of the chunk is finite
    (the loss of a step is taken before its update). Catches: a guard that checks only the
    losses (NaN parameters would go on, and into a checkpoint), one that marks the wrong
    step or the whole chunk, one that keeps the bad state instead of the chunk's start,
    one that freezes the healthy members too, and a frozen member that trains again.
    ``loop.guard``, which the run's next chunk starts from, gives ``record``'s state bit for
    bit (catches a guard alone that drifts from the one in ``record``)."""
    c = Config(**SMALL, **({"learning_rates": (0.1, 0.5)} if ensemble else {}))
    n = c.eval_every
    dev = _device_data(DATA)
    state, history, orders = loop.init_run(c, N_TRAIN)
    state, history, _ = loop.record(jax.tree.map(jnp.copy, state), state, history,  # step 0, as run does
                                    loop.nan_metrics(n, len(c.members) if ensemble else None), dev,
                                    eval_every=n, eval_batch_size=c.eval_batch_size)
    static = dict(num_steps=n, batch_size=c.batch_size, shared_batches=c.shares_batches)
    after, metrics = loop.run_steps_keeping_input(state, dev, orders, **static)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    bad = 1 if ensemble else None  # the member whose parameters go bad

    def poison(x):
        return x.at[(bad,) * ensemble + (0,) * (x.ndim - ensemble)].set(jnp.nan)

    leaves, treedef = jax.tree.flatten(after.params)
    poisoned = after.replace(params=jax.tree.unflatten(treedef, [poison(leaves[0]), *leaves[1:]]))
    start_host, after_host = jax.device_get(state), jax.device_get(after)
    alone = loop.guard(state, poisoned, metrics)  # before ``record`` donates ``state``
    guarded, history, report = loop.record(state, poisoned, history, metrics, dev,
                                           eval_every=n, eval_batch_size=c.eval_batch_size)
    _assert_same_state(alone, guarded)

    alive = np.atleast_1d(np.asarray(report["alive"]))
    assert alive.tolist() == ([True, False] if ensemble else [False])
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(loop.is_alive(guarded))), alive)
    for a, b in zip(_params(guarded, bad), _params(start_host, bad)):
        np.testing.assert_array_equal(a, b)  # back to the chunk's start
    if ensemble:
        for a, b in zip(_params(guarded, 0), _params(after_host, 0)):
            np.testing.assert_array_equal(a, b)  # the healthy member kept its chunk
    h = hist.truncate(jax.device_get(history), n)
    loss, member_metrics = hist.by_member(h, "train_loss"), np.asarray(metrics["loss"]).reshape(-1, n)
    i = bad or 0
    np.testing.assert_array_equal(loss[i, :n - 1], member_metrics[i, :n - 1])  # finite, kept
    assert loss[i, n - 1] == np.inf  # diverged exactly at the chunk's last step
    assert hist.by_member(h, "test_loss")[i, 1] == np.inf and np.isnan(hist.by_member(h, "test_accuracy")[i, 1])
    assert hist.first_nonfinite_steps(h) == ([None, n] if ensemble else [n])
    if ensemble:
        np.testing.assert_array_equal(loss[0], member_metrics[0])

    # No checkpoint holds non-finite parameters: save what the guard left, restore it.
    with checkpoint.manager(str(tmp_path / "checkpoints")) as mngr:
        # The run's step is the furthest member's; a lone frozen model is back at step 0.
        assert checkpoint.save(mngr, guarded, history) == (n if ensemble else 0)
        fresh, fresh_history, _ = loop.init_run(c, N_TRAIN)
        restored, _ = checkpoint.restore(mngr, fresh, fresh_history)
    for x in jax.tree.leaves(jax.device_get((restored.params, restored.opt_state))):
        assert np.all(np.isfinite(x))
    for a, b in zip(_params(restored, bad), _params(start_host, bad)):
        np.testing.assert_array_equal(a, b)

    if not ensemble:
        return  # a single model that diverged ends the run (test above): no next chunk
    # The frozen member stays frozen: the next chunk leaves it at the same start, every loss
    # +inf, while the healthy one trains on.
    after2, metrics2 = loop.run_steps_keeping_input(guarded, dev, orders, **static)
    alone2 = loop.guard(guarded, after2, metrics2)
    guarded2, history, report2 = loop.record(guarded, after2, history, metrics2, dev,
                                             eval_every=n, eval_batch_size=c.eval_batch_size)
    _assert_same_state(alone2, guarded2)
    assert np.asarray(report2["alive"]).tolist() == [True, False] and int(report2["step"]) == 2 * n
    for a, b in zip(_params(guarded2, bad), _params(start_host, bad)):
        np.testing.assert_array_equal(a, b)
    loss2 = hist.by_member(hist.truncate(jax.device_get(history), 2 * n), "train_loss")
    assert np.all(loss2[bad, n:] == np.inf) and np.all(np.isfinite(loss2[0]))


def _assert_same_state(a, b):
    a, b = (checkpoint._arrays(x, {}) for x in (a, b))  # PRNG keys as their raw data
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
        np.testing.assert_array_equal(x, y)


def test_misclassified_digits_are_the_final_models_mistakes(tmp_path):
    """misclassified.npz comes from the last evaluation's predictions (no second pass over
    the test set): the same digits as predicting with the final state, and as many
    mistakes as the final accuracy says. Catches predictions from an earlier evaluation,
    and padded batches that shift or drop examples."""
    from jaxmlp import train

    c = Config(**{**SMALL, "steps": 20, "eval_every": 10, "eval_batch_size": 64})  # 303 = 4*64 + 47
    result = run.train_and_evaluate(c, dataset=DATA, out_dir=str(tmp_path), quiet=True)
    with np.load(tmp_path / "misclassified.npz") as f:
        saved = dict(f)
    again = train.misclassified(result.state, DATA.test_images, DATA.test_labels, limit=len(DATA.test_labels))
    n_wrong = round((1 - result.summary["final_test_accuracy"]) * len(DATA.test_labels))
    assert 0 < len(again["label"]) == n_wrong
    for k in ("image", "predicted", "label"):
        np.testing.assert_array_equal(saved[k], again[k][:40], err_msg=k)
    test = train.evaluate(result.state, jnp.asarray(DATA.test_images, jnp.float32) / 255,
                          DATA.test_labels, batch_size=64, predictions=True)
    assert test["predicted"].shape == (303,) and test["predicted"].dtype == jnp.int32
    assert float(test["accuracy"]) == pytest.approx(float(np.mean(np.asarray(test["predicted"]) == DATA.test_labels)))


def test_summary_holds_every_field(tmp_path):
    c = Config(**SMALL)
    result = run.train_and_evaluate(c, dataset=DATA, out_dir=str(tmp_path), quiet=True)
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_test_accuracy", "final_test_loss", "best_test_accuracy", "best_test_step",
                "steps", "config", "wall_seconds", "environment", "timings", "files", "placement",
                "status", "members", "resumed_from_step", "steps_this_process", "data", "num_params"):
        assert key in s, key
    for name in ("jax", "jaxlib", "flax", "optax", "tensorflow_datasets", "backend", "device_kind",
                 "device_count"):
        assert s["environment"][name], name
    parts = ("startup_seconds", "compile_seconds", "train_seconds", "eval_seconds", "write_seconds",
             "other_seconds")
    for name in (*parts, "total_seconds"):
        assert s["timings"][name] >= 0, name
    assert sum(s["timings"][p] for p in parts) == pytest.approx(s["timings"]["total_seconds"])
    assert Config.from_dict(s["config"]) == c
    assert Config.from_dict(json.loads((tmp_path / "config.json").read_text())) == c
    assert s["status"] == "complete" and s["steps"] == 120
    assert (s["data"]["train_split"], s["data"]["test_split"]) == (c.train_split, c.test_split)
    assert s["resumed_from_step"] == 0 and s["steps_this_process"] == 120
    assert s["members"] == [{"seed": 0, "learning_rate": 0.3, "status": "complete",
                             "first_nonfinite_step": None,
                             "final_test_accuracy": pytest.approx(s["final_test_accuracy"]),
                             "best_test_accuracy": pytest.approx(s["best_test_accuracy"])}]
    for path in s["files"].values():
        assert os.path.exists(path), path
    with np.load(tmp_path / "history.npz") as h:
        assert h["train_loss"].shape == (120,) and h["test_accuracy"].shape == (7,)
        assert s["final_test_accuracy"] == pytest.approx(float(h["test_accuracy"][-1]))
        np.testing.assert_array_equal(h["test_accuracy"], result.history["test_accuracy"])
    # The returned summary is what was written (JSON turns tuples into lists, NaN into null).
    assert json.loads(json.dumps(records._jsonable(result.summary))) == s


class _Recorder(Reporter):
    """Records the step each chunk reports; raises SIGINT once at ``signal_at``."""

    def __init__(self, signal_at=None):
        super().__init__(quiet=True)
        self.signal_at, self.start_step, self.steps = signal_at, None, []

    def start(self, config, *, start_step=0, examples_per_epoch=60_000):
        super().start(config, start_step=start_step, examples_per_epoch=examples_per_epoch)
        self.start_step = start_step

    def chunk(self, step, test_accuracy, test_loss, alive, **extra):
        self.steps.append(step)
        if step == self.signal_at:
            signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def _sigint_swallowed():
    """A no-op SIGINT handler around the call: if ``train_and_evaluate`` failed to install
    its own, the test fails on its assertions instead of pytest stopping on Ctrl-C."""
    old = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_resume_runs_only_the_remaining_steps_and_matches_the_uninterrupted_run(tmp_path):
    """Stop at step 60 (between the periodic checkpoints at 40 and 80), resume. Catches: a
    resume that restarts from step 0 (its history would still come out bit-identical: the
    run is deterministic), one that restarts from the last periodic checkpoint (40), and an
    interrupt that does not save where it stopped."""
    c = Config(**{**SMALL, "checkpoint_every": 40})
    out = str(tmp_path / "run")
    stopper = _Recorder(signal_at=60)
    with _sigint_swallowed(), pytest.raises(run.Interrupted) as e:
        run.train_and_evaluate(c, dataset=DATA, out_dir=out, reporter=stopper)
    assert e.value.signum == signal.SIGINT
    assert "step 60" in str(e.value) and f"--resume {out}" in str(e.value)
    assert stopper.start_step == 0 and stopper.steps == [20, 40, 60]
    assert checkpoint.latest_step(os.path.join(out, "checkpoints")) == 60
    stopped = json.loads(open(os.path.join(out, "summary.json")).read())
    assert stopped["status"] == "interrupted" and stopped["steps"] == 60

    again = _Recorder()
    resumed = run.train_and_evaluate(c, dataset=DATA, out_dir=out, resume=True, reporter=again)
    assert again.start_step == 60 and again.steps == [80, 100, 120]  # only the remaining steps
    assert resumed.summary["resumed_from_step"] == 60 and resumed.summary["steps_this_process"] == 60
    saved = json.loads(open(os.path.join(out, "summary.json")).read())
    assert saved["status"] == "complete" and saved["resumed_from_step"] == 60
    assert saved["steps_this_process"] == 60 and saved["steps"] == 120

    whole = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    assert whole.summary["resumed_from_step"] == 0 and whole.summary["steps_this_process"] == 120
    _assert_same_history(resumed.history, whole.history)
    with np.load(os.path.join(out, "history.npz")) as h:
        _assert_same_history(dict(h), whole.history)
    for x, y in zip(_params(resumed.state), _params(whole.state)):
        np.testing.assert_array_equal(x, y)


_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import synthetic
    from jaxmlp import run
    from jaxmlp.config import Config
    config = Config(**{config!r})
    try:
        run.train_and_evaluate(config, dataset=synthetic(), out_dir={out!r}, resume={resume}, quiet=False)
    except run.Interrupted as e:
        print(e, flush=True)
        sys.exit(128 + e.signum)
""")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache shared by this module's child processes (same programs each time)."""
    return str(tmp_path_factory.mktemp("xla-cache"))


def _driver(config: dict, out: str, resume: bool) -> list[str]:
    code = _DRIVER.format(tests=str(ROOT / "tests"), config=config, out=out, resume=resume)
    return [sys.executable, "-u", "-c", code]


def _env(cache: str) -> dict:
    return child_env(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _progress_steps(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^(\d+): \*+ epoch", text, re.M)]


LONG = {**SMALL, "steps": 1000, "eval_every": 20, "log_every": 20, "checkpoint_every": 200}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compile_cache):
    """The folder of a ``LONG`` run never stopped (made once for both signals)."""
    whole = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    proc = subprocess.run(_driver(LONG, whole, False), capture_output=True, text=True, timeout=300,
                          env=_env(compile_cache))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return whole


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, signum, compile_cache, uninterrupted):
    """A real signal mid-run; the resumed process runs only the remaining steps (its summary
    and its progress lines say so: a resume from step 0 fails here) and ends bit-identical to
    a run never stopped."""
    config, stopped, whole = LONG, str(tmp_path / "stopped"), uninterrupted
    env = _env(compile_cache)
    proc = subprocess.Popen(_driver(config, stopped, False), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:  # wait until training is under way, then interrupt
        lines.append(line)
        if line.startswith("100:"):
            proc.send_signal(signum)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signum, out
    assert f"--resume {stopped}" in out
    summary = json.loads(open(os.path.join(stopped, "summary.json")).read())
    assert summary["status"] == "interrupted" and 100 <= summary["steps"] < 1000
    at = summary["steps"]
    assert checkpoint.latest_step(os.path.join(stopped, "checkpoints")) == at

    resumed = subprocess.run(_driver(config, stopped, True), capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    printed = _progress_steps(resumed.stdout)
    assert printed == list(range(at + 20, 1001, 20)), printed  # starts after the checkpoint
    summary = json.loads(open(os.path.join(stopped, "summary.json")).read())
    assert summary["resumed_from_step"] == at and summary["steps_this_process"] == 1000 - at
    assert summary["status"] == "complete" and summary["steps"] == 1000
    # Five checkpoints were saved (every 200 steps); the last 3 are kept.
    assert sorted(n for n in os.listdir(os.path.join(whole, "checkpoints")) if n.isdigit()) == \
        ["1000", "600", "800"]
    with np.load(os.path.join(stopped, "history.npz")) as a, np.load(os.path.join(whole, "history.npz")) as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = Config(**config)
    states = []
    for d in (stopped, whole):
        fresh, hist0, _ = loop.init_run(c, N_TRAIN)
        with checkpoint.manager(os.path.join(d, "checkpoints")) as m:
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
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("changes", [{"checkpoint_every": 40}, {"resume": True}])
def test_checkpoints_and_resume_are_refused_across_processes(changes, tmp_path, monkeypatch):
    """The README: checkpoints and --resume are single-process for now. Catches a
    multi-process run that saves (each process would need to write its own shards) or
    resumes anyway; the refusal comes before anything is written."""
    resume = changes.pop("resume", False)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(run.ConfigError, match="not supported with several processes"):
        run.train_and_evaluate(Config(**SMALL, **changes), dataset=DATA, out_dir=str(tmp_path / "out"),
                               resume=resume, quiet=True)
    assert not (tmp_path / "out").exists()


def test_the_next_chunk_is_dispatched_before_the_host_waits_for_the_scores(monkeypatch):
    """The README: between chunks the host dispatches the next chunk before it waits for
    the last one's scores. ``_run`` with programs that log their calls. Catches a loop
    that waits for each chunk's scores before it starts the next (training would then
    idle through every evaluation)."""
    c = Config(**SMALL)
    log = []
    State = collections.namedtuple("State", "step")

    def train_chunk(state):
        log.append(("train", state.step))
        return State(state.step + c.eval_every), {"chunk": state.step}

    def record(start, end, history, metrics):
        log.append(("record", end.step))
        report = {"step": np.int32(end.step), "alive": np.bool_(True), "test_accuracy": 0.5,
                  "test_loss": 1.0, "train_loss": 1.0, "train_accuracy": 0.5,
                  "weight_percentiles": None, "bias_percentiles": None}
        return history, report

    progs = run._Programs(train=train_chunk, guard=lambda start, end, metrics: end, record=record,
                          no_metrics={}, beside=False)
    monkeypatch.setattr(run.jax, "block_until_ready", lambda x: log.append(("wait", x)) or x)
    monkeypatch.setattr(run.jax, "device_get", lambda x: x)
    monkeypatch.setattr(run.hist, "truncate", lambda history, step: history)
    stop = type("Stop", (), {"signum": None})()
    run._run(c, State(0), {}, progs, None, Reporter(quiet=True), stop, 1000)
    calls = [(name, int(arg["step"]) if name == "wait" and "step" in arg else
              ("chunk", arg["chunk"]) if name == "wait" else arg) for name, arg in log if arg is not None]
    # Per chunk ending at s: its scores are requested, the chunk after it is dispatched,
    # and only then does the host wait (for the scores of s).
    for s in range(20, 100, 20):
        i = calls.index(("record", s))
        assert calls[i + 1] == ("train", s), calls[i:i + 3]
        assert calls[i + 2][0] == "wait" and calls.index(("wait", s)) > i + 1, calls[i:i + 4]
    assert ("train", 120) not in calls  # none past the last step


def test_the_recorded_test_scores_are_the_models_scores_on_the_raw_test_set():
    """``record`` scores a test set that ``_prepare`` scaled on the host (once, to float32);
    ``evaluate`` on the raw uint8 images scales inside the model. Catches a host scaling
    that differs from the model's (e.g. by 256), which the loop tests cannot see: their
    helper scales the test set itself."""
    from jaxmlp import train

    r = run.train_and_evaluate(Config(**SMALL), dataset=DATA, quiet=True)
    ev = train.evaluate(r.state, jnp.asarray(DATA.test_images), jnp.asarray(DATA.test_labels))
    assert float(r.history["test_loss"][-1]) == pytest.approx(float(ev["loss"]), rel=1e-5)
    assert float(r.history["test_accuracy"][-1]) == float(ev["accuracy"])


def test_each_steps_train_metrics_land_at_that_step_of_the_history():
    """The history's train record of a whole run is, step for step, what ``run_steps``
    returns from the same start: every step filled (no NaN left), the first chunk's 20 at
    1..20, the last chunk's at 101..120. Catches metrics written one step off, or stamped
    with the step before the update."""
    c = Config(**SMALL)
    r = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    assert np.all(np.isfinite(r.history["train_loss"])) and r.history["train_loss"].shape == (120,)
    state, _, orders = loop.init_run(c, len(DATA.train_labels))
    _, metrics = loop.run_steps(state, device_data(DATA), orders, num_steps=120, batch_size=50)
    np.testing.assert_array_equal(np.asarray(metrics["step"]), np.arange(1, 121))
    for k in ("loss", "accuracy"):
        np.testing.assert_allclose(r.history[f"train_{k}"], np.asarray(metrics[k]), rtol=1e-5, atol=1e-7)
