"""The command-line entry points: flag validation, run folders, what a run prints, bad
inputs and signals, end to end.

Most runs call ``scripts/train.py``'s ``main`` in this process with the data layer
replaced by ``conftest.synthetic`` (no TFDS, programs compiled once per process);
the signal and run-folder tests start the real script in a child process through a
small driver that does the same replacement. Every bad-input test checks the one-line
message and that nothing in the run folder changed. Each test names the
wrong-but-plausible implementation it exists to catch.
"""

import gc
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, child_env, synthetic

from jaxmlp import data
from jaxmlp import history as hist
from jaxmlp import parallel

TRAIN = str(ROOT / "scripts" / "train.py")
PLOT = str(ROOT / "scripts" / "plot.py")
SMALL = {"hidden": "32,16", "batch-size": "50", "steps": "120", "eval-every": "20", "log-every": "40"}


def _argv(*extra: str, **flags) -> list[str]:
    """Flags for a small run: ``SMALL`` with ``flags`` (underscores for dashes) on top."""
    given = {**SMALL, **{k.replace("_", "-"): str(v) for k, v in flags.items()}}
    return [a for k, v in given.items() for a in (f"--{k}", v)] + ["--compile-cache", "", *extra]


def _load_script(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    """scripts/train.py as a module (its ``main`` and ``parser``)."""
    return _load_script(TRAIN, "jaxmlp_train_script")


def _synthetic_load(*_args, **_kwargs):
    return synthetic()


@pytest.fixture
def synthetic_data(monkeypatch):
    monkeypatch.setattr(data, "load", _synthetic_load)


def _snapshot(folder) -> dict:
    """Every path under ``folder`` with its bytes (or what a link points to), to compare
    before and after; None if it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return None
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            found[rel] = ("link", os.readlink(p)) if p.is_symlink() else \
                ("dir",) if p.is_dir() else p.read_bytes()
    return found


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, script):
    """A complete single-model run (seed 0) with checkpoints at 40, 80 and 120; copy it
    before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "load", _synthetic_load)
        assert script.main(_argv("--quiet", checkpoint_every=40, out=out)) == 0
    assert sorted(os.listdir(out / "checkpoints")) == ["120", "40", "80"]
    return out


@pytest.fixture
def resumable(finished_run, tmp_path):
    """A copy of ``finished_run`` that looks stopped at step 80 (its last checkpoint gone)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    shutil.rmtree(run_dir / "checkpoints" / "120")
    return run_dir


# --- flags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--learning-rate", "-0.1"], "learning_rate must be positive"),
    (["--steps", "1000", "--eval-every", "300"], "eval_every (300) must divide steps (1000)"),
    (["--dataset", "cifar10"], "accepted: mnist, fashion_mnist, kmnist"),
    (["--hidden", "200,x"], "expected comma-separated integers"),
])
def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, flags, fragment):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, TRAIN, *flags, "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 2
    assert fragment in _error_line(proc.stderr), proc.stderr
    assert not out.exists()  # nothing was started
    assert time.perf_counter() - t0 < 15  # rejected before JAX or TFDS are loaded


def test_every_config_field_has_a_flag(script):
    import dataclasses

    from jaxmlp.config import Config

    flags = {a.dest for a in script.parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= flags
    assert {"out", "resume", "overwrite", "quiet", "distributed", "compile_cache"} <= flags


# --- end to end ------------------------------------------------------------------------------

def test_train_script_end_to_end_on_mock_data(tmp_path, capsys, script):
    """scripts/train.py on tfds.testing.mock_data writes every output of a run."""
    import tensorflow_datasets as tfds

    from jaxmlp import plot

    out = tmp_path / "run"
    argv = ["--steps", "60", "--eval-every", "20", "--log-every", "20", "--hidden", "32,16",
            "--data-dir", str(tmp_path / "tfds"), "--out", str(out), "--compile-cache", ""]
    with tfds.testing.mock_data(num_examples=250):
        assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "20: ********* epoch 9 ********* test accuracy:" in printed  # 20 steps * 100 / 250 + 1
    assert "final test accuracy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["config"]["hidden"] == [32, 16]
    assert summary["data"]["train_examples"] == 250 and summary["status"] == "complete"
    with np.load(out / "history.npz") as h:
        assert h["train_loss"].shape == (60,) and h["train_accuracy"].shape == (60,)
        assert list(h["test_step"]) == [0, 20, 40, 60]
        assert np.all(np.isfinite(h["test_loss"])) and np.all((h["test_accuracy"] >= 0) & (h["test_accuracy"] <= 1))
    for name in ("accuracy.png", "cross_entropy.png", "dashboard.png"):
        head = (out / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert (width, height) == plot.expected_size(name), name


def test_quiet_prints_nothing_on_success(tmp_path, capsys, script):
    import tensorflow_datasets as tfds

    argv = ["--steps", "20", "--eval-every", "10", "--log-every", "10", "--hidden", "16",
            "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "run"), "--compile-cache", "",
            "--quiet"]
    with tfds.testing.mock_data(num_examples=120):
        assert script.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "run" / "summary.json").exists()


# --- run folders: refused, overwritten --------------------------------------------------------

def test_reused_out_is_refused_in_one_line_and_left_untouched(finished_run, capsys, script, monkeypatch):
    """Catches: a second run written over (or mixed into) the first one's files, and a
    refusal that clears the folder or loads data first."""
    before = _snapshot(finished_run)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded for a refused --out"))
    assert script.main(_argv("--quiet", seed=1, out=finished_run)) in (1, 2)
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("error:") and str(finished_run) in line
    assert "--resume" in line and "--overwrite" in line
    assert _snapshot(finished_run) == before


def test_overwrite_clears_the_old_run_first(finished_run, tmp_path, capsys, script, synthetic_data):
    """A single seed-0 run (misclassified.npz, checkpoints 40/80/120) overwritten by an
    ensemble of seeds 1 and 2 with 60 steps. Catches: --overwrite that only writes over
    the files (the single run's misclassified.npz and its later checkpoints would survive,
    and --resume would then continue seed 0's run), and one that deletes the user's own files."""
    from jaxmlp import checkpoint, loop
    from jaxmlp.config import Config

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    (run_dir / "notes.txt").write_text("mine")
    argv = _argv("--overwrite", "--quiet", seeds="1,2", steps=60, checkpoint_every=20, out=run_dir)
    assert script.main(argv) == 0, capsys.readouterr().err
    assert not (run_dir / "misclassified.npz").exists()  # an ensemble writes none
    assert (run_dir / "notes.txt").read_text() == "mine"
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert config.seeds == (1, 2) and config.steps == 60
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2] and summary["steps"] == 60
    assert sorted(n for n in os.listdir(run_dir / "checkpoints") if n.isdigit()) == ["20", "40", "60"]
    with np.load(run_dir / "history.npz") as h:
        saved = dict(h)
    assert saved["train_loss"].shape == (2, 60)
    fresh, fresh_history, _ = loop.init_run(config, len(synthetic().train_labels))
    with checkpoint.manager(str(run_dir / "checkpoints")) as mngr:
        state, history = checkpoint.restore(mngr, fresh, fresh_history)
    assert np.asarray(state.step).tolist() == [60, 60]
    np.testing.assert_array_equal(np.asarray(history["train_loss"]), saved["train_loss"])


# --- resume ------------------------------------------------------------------------------------

def _garble(path: Path) -> None:
    b = bytearray(path.read_bytes())
    for i in range(len(b) // 3, len(b) // 3 + 2000):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


_BAD_RUN_FOLDERS = {
    # name: (how to damage the resumable run folder, a fragment of the one-line error)
    "garbled checkpoint": (lambda d: _garble(_largest_file(d / "checkpoints" / "80")),
                           "to resume from the checkpoint at step 40"),
    "truncated checkpoint": (lambda d: os.truncate(_largest_file(d / "checkpoints" / "80"),
                                                   _largest_file(d / "checkpoints" / "80").stat().st_size // 2),
                             "to resume from the checkpoint at step 40"),
    "checkpoint file deleted": (lambda d: (d / "checkpoints" / "80" / "default" / "_METADATA").unlink(),
                                "to resume from the checkpoint at step 40"),
    "no checkpoint": (lambda d: shutil.rmtree(d / "checkpoints"), "nothing to resume"),
    "missing config.json": (lambda d: (d / "config.json").unlink(), "config.json"),
    "malformed config.json": (lambda d: (d / "config.json").write_text('{"steps": 120,'), "config.json"),
    "config.json with a bad field": (lambda d: (d / "config.json").write_text('{"steps": "many"}'), "steps"),
    "not a run folder": (lambda d: (shutil.rmtree(d), d.mkdir(), (d / "notes.txt").write_text("x")),
                         "not a jaxmlp run folder"),
    "no such folder": (lambda d: shutil.rmtree(d), "does not exist"),
    "a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a folder"),
}


# A failed Orbax restore leaves its reading coroutines for the garbage collector, which
# closes them ("Exception ignored in: <coroutine ...>"): Orbax's, and harmless. Collected
# here, so the warning is this test's (and ignored), not a later test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", list(_BAD_RUN_FOLDERS))
def test_resume_of_a_bad_run_folder_fails_in_one_line_and_changes_nothing(
        resumable, damage, capsys, script, synthetic_data):
    """Catches: a traceback instead of one line, a corrupt checkpoint restored as if it were
    sound (garbage parameters trained on, the records overwritten), and a failed resume
    that has already written, cleared or created something in the folder."""
    breaks, fragment = _BAD_RUN_FOLDERS[damage]
    breaks(resumable)
    before = _snapshot(resumable.parent)
    code = script.main(["--resume", str(resumable), "--compile-cache", "", "--quiet"])
    line = _error_line(capsys.readouterr().err)
    assert code in (1, 2), line
    assert line.startswith("error:") and fragment in line, line
    assert _snapshot(resumable.parent) == before
    gc.collect()


def test_resume_refuses_flags_that_change_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"steps": 200, "eval_every": 100, "log_every": 100}))
    proc = subprocess.run([sys.executable, TRAIN, "--resume", str(run_dir), "--steps", "400",
                           "--batch-size", "50"], capture_output=True, text=True, timeout=60, env=child_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --resume continues the saved run; drop --batch-size, --steps"


def test_resume_refuses_eval_batch_size(resumable, capsys, script, monkeypatch):
    """The test loss's summation order depends on it. Catches ``eval_batch_size`` left in
    ``config.RESUMABLE``."""
    before = _snapshot(resumable)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded for a refused resume"))
    assert script.main(["--resume", str(resumable), "--eval-batch-size", "100"]) == 2
    assert _error_line(capsys.readouterr().err) == \
        "error: --resume continues the saved run; drop --eval-batch-size"
    assert _snapshot(resumable) == before


def test_resuming_a_completed_run_says_so_and_changes_nothing(finished_run, capsys, script, synthetic_data):
    """Catches: a resume that reruns the last chunk or restarts, rewriting the records, and
    one that reports a finished run as an error."""
    before = _snapshot(finished_run)
    assert script.main(["--resume", str(finished_run), "--compile-cache", "", "--log-every", "20"]) == 0
    captured = capsys.readouterr()
    assert "already ran all 120 steps" in captured.out + captured.err
    assert "error" not in captured.out + captured.err
    assert _snapshot(finished_run) == before


# --- divergence and what an ensemble prints --------------------------------------------------

_PROGRESS = re.compile(r"^(\d+): \*+ epoch \d+ \*+ best member \(seed (\d+), lr ([^)]+)\): "
                       r"test accuracy (\d\.\d{4}); members (\d\.\d{4})-(\d\.\d{4})(, (\d+) diverged)?$")


def test_one_diverged_member_warns_and_the_others_finish(tmp_path, capsys, script, synthetic_data):
    """lr 1e6 overflows at step 3, lrs 0.05 and 0.5 train on. Catches: an ensemble stopped
    by one member, a member's divergence not reported (or reported without its seed and
    lr), a summary that calls every member complete, progress lines that show a mean (or
    count the dead member in the spread), and a record whose history hides the divergence."""
    out = tmp_path / "run"
    assert script.main(_argv(learning_rates="0.05,0.5,1e6", out=out)) == 0
    captured = capsys.readouterr()
    with np.load(out / "history.npz") as h:
        history = dict(h)
    bad = hist.first_nonfinite_steps(history)
    assert bad[:2] == [None, None] and bad[2] is not None
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: member seed 0, lr 1e+06 diverged at step {bad[2]}; the others trained on"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 120
    members = summary["members"]
    assert [(m["seed"], m["learning_rate"], m["status"], m["first_nonfinite_step"]) for m in members] == \
        [(0, 0.05, "complete", None), (0, 0.5, "complete", None), (0, 1e6, "diverged", bad[2])]
    for m in members[:2]:
        assert np.isfinite(m["final_test_accuracy"]) and np.isfinite(m["best_test_accuracy"])
    assert np.all(np.isfinite(history["train_loss"][:2])) and np.all(np.isfinite(history["test_loss"][:2]))
    assert np.all(history["train_loss"][2, bad[2] - 1:] == np.inf)  # what the plot marks
    assert np.all(np.isnan(history["test_accuracy"][2, 1:]))

    # Progress lines: the best live member and the spread of the live ones, at each log step.
    acc = history["test_accuracy"][:2]
    progress = [line for line in captured.out.splitlines() if re.match(r"^\d+: \*", line)]
    assert len(progress) == 3, captured.out
    for line in progress:
        m = _PROGRESS.match(line)
        assert m, line
        j = list(history["test_step"]).index(int(m.group(1)))
        best = int(np.argmax(acc[:, j]))
        assert (int(m.group(2)), float(m.group(3))) == (0, [0.05, 0.5][best]), line
        assert m.group(4) == f"{acc[best, j]:.4f}", line
        assert (m.group(5), m.group(6)) == (f"{acc[:, j].min():.4f}", f"{acc[:, j].max():.4f}"), line
        assert m.group(8) == "1", line
    final = [line for line in captured.out.splitlines() if "final test accuracy" in line]
    best = int(np.argmax(acc[:, -1]))
    assert final == [f"best member (seed 0, lr {[0.05, 0.5][best]:g}): final test accuracy "
                     f"{acc[best, -1]:.4f} after 120 steps; 2 members {acc[:, -1].min():.4f}-"
                     f"{acc[:, -1].max():.4f} in {summary['wall_seconds']:.1f} s; records in {out}"]


def test_every_member_diverged_exits_1_and_keeps_the_record(tmp_path, capsys, script, synthetic_data):
    """Catches: an ensemble that runs on with no live member, a success exit, a record not
    saved, and members whose divergence goes unreported (one warning each, then the error)."""
    out = tmp_path / "run"
    assert script.main(_argv("--quiet", learning_rates="1e6,1e8", checkpoint_every=20, out=out)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    summary = json.loads((out / "summary.json").read_text())
    steps = [m["first_nonfinite_step"] for m in summary["members"]]
    assert summary["status"] == "diverged" and [m["status"] for m in summary["members"]] == ["diverged"] * 2
    assert all(s is not None and 1 <= s <= 20 for s in steps)
    warnings = [line for line in lines if line.startswith("warning")]
    assert len(warnings) == 2, err
    for line, lr, s in zip(warnings, ("1e+06", "1e+08"), steps):
        assert line.startswith(f"warning: member seed 0, lr {lr} diverged at step {s}"), err
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and "every member" in error[0] and str(out) in error[0], err
    with np.load(out / "history.npz") as h:
        assert hist.first_nonfinite_steps(dict(h)) == steps
        assert h["train_loss"].shape == (2, 20)  # saved up to the chunk where the last one died
    ckpts = out / "checkpoints"  # none of a dead run (the folder is made at the first save)
    assert not ckpts.exists() or not [n for n in os.listdir(ckpts) if n.isdigit()]


def test_ensemble_lines_name_the_best_member_and_the_spread_never_a_mean(capsys):
    """The reporter and the final lines, on numbers chosen so that the means (0.675, 0.633),
    the first member and the best differ. Catches: a mean printed as 'test accuracy', the best
    member named by its index instead of its seed and lr, and a spread that counts a
    diverged member."""
    from jaxmlp import run
    from jaxmlp.config import Config
    from jaxmlp.report import Reporter

    c = Config(hidden=(8,), steps=40, eval_every=20, log_every=20, seeds=(3, 5), learning_rates=(0.05, 0.5))
    # members: (3, 0.05), (3, 0.5), (5, 0.05), (5, 0.5)
    reporter = Reporter()
    reporter.start(c, start_step=0, examples_per_epoch=1000)
    loss = np.ones(4, np.float32)
    reporter.chunk(20, np.array([0.5, 0.9, 0.7, 0.6]), loss, np.array([True] * 4))
    reporter.chunk(40, np.array([0.5, np.nan, 0.8, 0.6]), loss, np.array([True, False, True, True]))
    reporter.close()
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "20: ********* epoch 3 ********* best member (seed 3, lr 0.5): test accuracy 0.9000; "
        "members 0.5000-0.9000",
        "40: ********* epoch 5 ********* best member (seed 5, lr 0.05): test accuracy 0.8000; "
        "members 0.5000-0.8000, 1 diverged"]
    assert not any("0.675" in line or "0.633" in line for line in printed)  # the means

    def member(i, acc, status="complete"):
        seed, lr = c.members[i]
        return {"seed": seed, "learning_rate": lr, "status": status, "final_test_accuracy": acc,
                "best_test_accuracy": acc, "first_nonfinite_step": 7 if status == "diverged" else None}

    summary = {"steps": 40, "final_test_accuracy": [0.5, float("nan"), 0.8, 0.6],
               "members": [member(0, 0.5), member(1, float("nan"), "diverged"), member(2, 0.8), member(3, 0.6)]}
    assert run.final_lines(summary, "out") == [
        "warning: member seed 3, lr 0.5 diverged at step 7; the others trained on",
        "best member (seed 5, lr 0.05): final test accuracy 0.8000 after 40 steps; "
        "3 members 0.5000-0.8000; records in out"]


# --- signals and run folders: the real script in a child process ---------------------------

_DRIVER = textwrap.dedent("""
    import os, runpy, signal, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import synthetic
    from jaxmlp import data, plot

    def load(*args, **kwargs):
        print("LOADING DATA", flush=True)
        time.sleep({load_seconds})
        return synthetic()

    data.load = load
    if {signal_while_writing}:
        draw = plot.plot_history

        def plot_history(*args, **kwargs):  # the final writes: signal this process, then go on
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            return draw(*args, **kwargs)

        plot.plot_history = plot_history
    {extra}
    sys.argv = [{train!r}, *{argv!r}]
    runpy.run_path({train!r}, run_name="__main__")
""")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this module's child processes (the same programs each time)."""
    return str(tmp_path_factory.mktemp("xla-cache"))


def _driver(argv, *, load_seconds=0.0, signal_while_writing=False, extra="",
            unbuffered=True) -> list[str]:
    """The child's command: ``extra`` (code, dedented) runs just before the script."""
    code = _DRIVER.format(tests=str(ROOT / "tests"), train=TRAIN, argv=list(map(str, argv)),
                          load_seconds=load_seconds, signal_while_writing=signal_while_writing,
                          extra=textwrap.dedent(extra))
    return [sys.executable, *(["-u"] if unbuffered else []), "-c", code]


def _child_argv(cache, **flags):
    return [a if a != "" else cache for a in _argv(**flags)]  # --compile-cache CACHE


def test_sigint_during_startup_stops_with_nothing_written(tmp_path, compile_cache):
    """SIGINT while the data loads. Catches: no handler during start-up (a traceback, or the
    'second signal' message), and one that lets training start and then stops after a chunk
    (a checkpoint, records and a --resume hint for a run that was never asked for)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_driver(_child_argv(compile_cache, out=out), load_seconds=2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "LOADING DATA"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert _error_line(stderr) == "interrupted during start-up: nothing was trained and nothing written"
    assert "--resume" not in stdout + stderr
    assert not out.exists() or os.listdir(out) == []


def test_sigint_during_the_final_writes_finishes_them(tmp_path, compile_cache):
    """The signal arrives while the figures are drawn. Catches: writes abandoned half way
    (no summary.json), and a message that calls a finished run interrupted mid-training
    (with a --resume hint)."""
    out = tmp_path / "run"
    proc = subprocess.run(_driver(_child_argv(compile_cache, out=out), signal_while_writing=True),
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert _error_line(proc.stderr) == \
        f"interrupted after training had finished; the records were completed in {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 120
    assert set(summary["files"]) == {"config.json", "history.npz", "misclassified.npz", "accuracy.png",
                                     "cross_entropy.png", "dashboard.png", "checkpoints"}
    for path in summary["files"].values():
        assert os.path.exists(path), path
    with np.load(out / "history.npz") as h:
        assert h["train_loss"].shape == (120,) and np.all(np.isfinite(h["train_loss"]))
        assert summary["final_test_accuracy"] == pytest.approx(float(h["test_accuracy"][-1]))
    assert sorted(os.listdir(out / "checkpoints")) == ["120"]


_PAUSE_AT_STARTUP = """
    from jaxmlp import parallel
    use = parallel.use_cpu_devices

    def use_cpu_devices(n):  # after JAX's import, before the run's own signal handlers
        print("STARTING", flush=True)
        time.sleep(3)
        return use(n)

    parallel.use_cpu_devices = use_cpu_devices
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_run_starts_leaves_no_folder_and_one_line(tmp_path, signum, compile_cache):
    """A default run (no --out) signalled after JAX's import, before the run's own
    handlers. Catches: the run folder made before the imports and left empty with
    'latest' moved onto it (a later --resume runs/latest then fails), a KeyboardInterrupt
    traceback, and SIGTERM's default action (the process killed, nothing cleaned up)."""
    older = tmp_path / "runs" / "20200101-000000-mnist"
    older.mkdir(parents=True)
    (older / "history.npz").write_bytes(b"an older run")
    os.symlink(older.name, tmp_path / "runs" / "latest")
    argv = [a for a in _child_argv(compile_cache) if a]
    proc = subprocess.Popen(_driver(argv, extra=_PAUSE_AT_STARTUP), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path)
    assert proc.stdout.readline().strip() == "STARTING"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stdout + stderr
    assert _error_line(stderr) == "stopped during start-up: nothing was trained and nothing written"
    assert sorted(os.listdir(tmp_path / "runs")) == ["20200101-000000-mnist", "latest"]
    assert os.readlink(tmp_path / "runs" / "latest") == "20200101-000000-mnist"


_TWO_SIGNALS_AT = """
    from jaxmlp import report
    chunk = report.Reporter.chunk

    def two_signals(self, step, *args, **kwargs):  # the second stops the run at once
        chunk(self, step, *args, **kwargs)
        if step == {step}:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep({gap})
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    report.Reporter.chunk = two_signals
"""


@pytest.mark.parametrize("checkpoint_every, at, says", [
    (0, 40, "no checkpoint was saved; start again with --out {out} --overwrite"),
    (20, 60, "continue from the checkpoint at step 40 with --resume {out}")])
def test_a_second_signal_stops_at_once_and_says_what_can_be_resumed(
        tmp_path, checkpoint_every, at, says, compile_cache):
    """SIGINT then SIGTERM at one chunk. Catches: a message that promises a resume when no
    checkpoint was saved (the folder then holds only config.json, which --resume refuses),
    a resume hint that names no step, and an exit status that ignores the second signal
    (143 for SIGTERM)."""
    out = tmp_path / "run"
    argv = _child_argv(compile_cache, out=out, checkpoint_every=checkpoint_every)
    proc = subprocess.run(_driver(argv, extra=_TWO_SIGNALS_AT.format(step=at, gap=1.2)),
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "stopped at once by a second signal; " + says.format(out=out)
    if checkpoint_every:  # and the resume it names works from there, saving every 40 from now on
        proc = subprocess.run(_driver([*_child_argv(compile_cache), "--resume", str(out), "--quiet",
                                       "--checkpoint-every", "40"]),
                              capture_output=True, text=True, timeout=300, env=child_env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["resumed_from_step"] == 40 and summary["steps"] == 120
        assert sorted(os.listdir(out / "checkpoints")) == ["120", "40", "80"]
        # config.json says so too, so that a later --resume keeps the new interval.
        assert json.loads((out / "config.json").read_text())["checkpoint_every"] == 40


def test_one_stop_delivered_twice_at_once_is_one_stop(tmp_path, compile_cache):
    """SIGINT and SIGTERM 0.05 s apart at step 40, as GNU ``timeout`` delivers one stop (to
    the process, then to its process group). Catches a second-signal rule without a
    grace period: the run stops at once (seen in about 1 of 10 ``timeout -s INT`` stops
    before the rule, once in the middle of writing the final checkpoint), instead of
    finishing the chunk, saving and saying how to resume."""
    out = tmp_path / "run"
    argv = _child_argv(compile_cache, out=out)
    proc = subprocess.run(_driver(argv, extra=_TWO_SIGNALS_AT.format(step=40, gap=0.05)),
                          capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 130, proc.stdout + proc.stderr  # the first signal's
    assert _error_line(proc.stderr) == (f"interrupted at step 40; saved to {out}; continue with: "
                                        f"python scripts/train.py --resume {out}")
    assert sorted(os.listdir(out / "checkpoints")) == ["40"]


def test_overwrite_replaces_the_old_run_only_once_the_new_one_has_started(
        finished_run, tmp_path, capsys, script, synthetic_data):
    """--overwrite with a batch larger than the data (found after the data loads). Catches:
    the old run deleted first, so a new run that then fails its checks leaves nothing."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    before = _snapshot(run_dir)
    assert script.main(_argv("--overwrite", "--quiet", batch_size=5000, out=run_dir)) == 1
    assert _error_line(capsys.readouterr().err) == \
        "error: batch_size 5000 exceeds the 1000 training examples"
    assert _snapshot(run_dir) == before


def test_overwrite_stopped_during_start_up_leaves_the_old_run(finished_run, tmp_path, compile_cache):
    """The same, stopped by SIGINT while the data loads: the message says the old run is
    as it was, and it is."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    before = _snapshot(run_dir)
    proc = subprocess.Popen(_driver([*_child_argv(compile_cache, out=run_dir), "--overwrite"],
                                    load_seconds=2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "LOADING DATA"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert _error_line(stderr) == ("interrupted during start-up: nothing was trained and nothing "
                                   f"written; the run in {run_dir} is as it was")
    assert _snapshot(run_dir) == before


def test_a_folder_in_use_by_another_run_is_refused(finished_run, tmp_path, capsys, script, monkeypatch):
    """A run (new, --overwrite or --resume) into a folder another run holds. Catches: two
    processes writing one folder (each checked it once, at its start, and found it free)."""
    from jaxmlp import runs

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded for a refused folder"))
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    shutil.rmtree(run_dir / "checkpoints" / "120")  # resumable
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, extra in ((empty, ["--out", str(empty)]), (run_dir, ["--out", str(run_dir), "--overwrite"]),
                          (run_dir, ["--resume", str(run_dir)])):
        before = _snapshot(folder)
        with runs.locked(folder):
            argv = extra if extra[0] == "--resume" else _argv("--quiet", *extra)
            assert script.main([*argv, "--compile-cache", ""]) == 1
        assert _error_line(capsys.readouterr().err) == \
            f"error: {folder} is in use by another jaxmlp run; wait for it to end, or choose another folder"
        assert _snapshot(folder) == before


def test_a_runs_folder_that_cannot_be_made_fails_in_one_line(tmp_path, capsys, script, monkeypatch):
    """'runs' is a file. Catches: a FileExistsError traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    assert script.main(_argv("--quiet")) == 1
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot make a run folder under {tmp_path / 'runs'}: ")
    assert line.endswith("; choose one with --out DIR")


def test_a_resume_that_finds_the_last_records_unwritten_writes_them(finished_run, tmp_path, capsys,
                                                                    script, synthetic_data):
    """The process ended after its final checkpoint, before summary.json (which is written
    last): the summary still says 'interrupted at 80' and misclassified.npz and a figure are
    missing. Catches: a resume that says 'already ran all 120 steps; nothing to do' and
    leaves those records stale for good."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    good = json.loads((run_dir / "summary.json").read_text())
    with np.load(finished_run / "misclassified.npz") as f:
        wrong = dict(f)
    stale = {**good, "status": "interrupted", "steps": 80}
    (run_dir / "summary.json").write_text(json.dumps(stale))
    (run_dir / "misclassified.npz").unlink()
    (run_dir / "dashboard.png").unlink()
    assert script.main(["--resume", str(run_dir), "--compile-cache", "", "--quiet"]) == 0, \
        capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 120
    assert summary["resumed_from_step"] == 120 and summary["steps_this_process"] == 0
    assert summary["final_test_accuracy"] == good["final_test_accuracy"]
    with np.load(run_dir / "misclassified.npz") as f:
        for k, v in wrong.items():
            np.testing.assert_array_equal(f[k], v)
    assert (run_dir / "dashboard.png").is_file()
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["120", "40", "80"]
    # Now complete: a further resume changes nothing.
    before = _snapshot(run_dir)
    assert script.main(["--resume", str(run_dir), "--compile-cache", ""]) == 0
    assert "already ran all 120 steps" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_what_the_script_prints_reaches_a_pipe(tmp_path, compile_cache):
    """Without ``python -u``, stdout into a pipe is block-buffered. Catches a script that
    ends with ``os._exit`` (skipping the interpreter's teardown) before flushing: the
    progress and final lines would be lost."""
    out = tmp_path / "run"
    env = {k: v for k, v in child_env().items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(_driver(_child_argv(compile_cache, out=out), unbuffered=False),
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("final test accuracy ") and last.endswith(f"; records in {out}"), proc.stdout


def test_default_out_makes_a_new_run_folder_and_points_latest_to_it(tmp_path, compile_cache):
    """Two runs without --out in one folder. Catches: runs written into one shared folder
    (the second would be refused or overwrite the first), a 'latest' that does not move,
    an absolute link (breaks when runs/ is moved), and plot.py that cannot read it."""
    env = child_env()
    argv = [a for a in _child_argv(compile_cache) if a]
    made = []
    for _ in range(2):
        proc = subprocess.run(_driver([*argv, "--quiet"]), capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs = sorted(p for p in os.listdir(tmp_path / "runs") if p != "latest")
        new = [r for r in runs if r not in made]
        assert len(new) == 1 and re.fullmatch(r"\d{8}-\d{6}-mnist(-\d+)?", new[0]), runs
        made += new
        link = tmp_path / "runs" / "latest"
        assert link.is_symlink() and os.readlink(link) == new[0]  # relative, to the newest
        assert (link / "summary.json").is_file()
    assert len(made) == 2 and set(os.listdir(tmp_path)) == {"runs"}
    before = (tmp_path / "runs" / made[1] / "accuracy.png").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, PLOT, "runs/latest"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 3 and all("runs/latest" in p for p in proc.stdout.split())
    assert (tmp_path / "runs" / made[1] / "accuracy.png").stat().st_mtime_ns > before


def test_a_default_run_that_fails_before_writing_leaves_no_folder(tmp_path, monkeypatch, script):
    """The folder made for a run that failed at once is removed and ``latest`` goes back to
    the run before. Catches: an empty run folder left behind with ``latest`` pointing to it
    (``scripts/plot.py runs/latest`` would then fail on a run that never was)."""
    from jaxmlp import data

    older = tmp_path / "runs" / "20200101-000000-mnist"
    older.mkdir(parents=True)
    (older / "history.npz").write_bytes(b"a finished run")
    os.symlink(older.name, tmp_path / "runs" / "latest")
    (tmp_path / "runs" / "ladder").mkdir()  # not a stamped run folder: never 'latest'

    def offline(*args, **kwargs):
        raise data.DataError("offline")

    monkeypatch.setattr(data, "load", offline)
    monkeypatch.chdir(tmp_path)
    assert script.main(["--steps", "20", "--eval-every", "10", "--log-every", "10",
                        "--compile-cache", "", "--quiet"]) == 1
    assert sorted(os.listdir(tmp_path / "runs")) == ["20200101-000000-mnist", "ladder", "latest"]
    assert os.readlink(tmp_path / "runs" / "latest") == "20200101-000000-mnist"
    # The first run in a fresh folder: the runs folder it made goes too.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    assert script.main(["--steps", "20", "--eval-every", "10", "--log-every", "10",
                        "--compile-cache", "", "--quiet"]) == 1
    assert os.listdir(fresh) == []


def test_an_ensemble_on_cpu_gets_a_device_per_core_and_a_single_model_one(tmp_path, compile_cache):
    """scripts/train.py in a fresh process: 4 seeds split over as many CPU devices as there
    are cores (that divide 4), one model trained on one device and scored on another, and a
    device count the user set (XLA_FLAGS) is kept. Catches: the split never applied (JAX
    started before it), or applied to a single model too (it then trains data parallel over
    cores it already used)."""
    cores = parallel.split_count(4, parallel.usable_cores())
    env = {k: v for k, v in child_env().items() if k != "XLA_FLAGS"}
    beside = parallel.usable_cores() > 1  # a single model is scored on a second device
    cases = [({"seeds": "0,1,2,3"}, env, {"mode": "model" if cores > 1 else "single", "num_devices": cores,
                                          "eval_beside": False}),
             ({}, env, {"mode": "single", "num_devices": 1, "eval_beside": beside}),
             ({"seeds": "0,1,2,3"}, {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
              {"mode": "single", "num_devices": 1, "eval_beside": False})]
    for i, (flags, environ, placement) in enumerate(cases):
        out = tmp_path / f"run{i}"
        proc = subprocess.run(_driver([*_child_argv(compile_cache, out=out, steps=40, **flags), "--quiet"]),
                              capture_output=True, text=True, timeout=300, env=environ)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((out / "summary.json").read_text())["placement"] == placement, flags
