"""scripts/train.py: flags, one-line errors, folders, resume, and signals in a real process."""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, child_env, synthetic

from jaxmlp import records
from jaxmlp.config import Config

FAST = ["--hidden", "16", "--batch-size", "50", "--steps", "40", "--eval-every", "20",
        "--log-every", "20"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def offline_data(monkeypatch):
    """data.load returns small synthetic digits (the tests never touch TFDS or the network)."""
    from jaxmlp import data

    calls = []

    def load(name, **kwargs):
        calls.append(name)
        return synthetic(300, 60)._replace(name=name)

    monkeypatch.setattr(data, "load", load)
    return calls


def test_every_config_field_has_a_flag(script):
    flags = {a.dest for a in script.parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= flags


@pytest.mark.parametrize("flags, fragment", [
    (["--steps", "10"], "eval_every (100) must divide steps (10)"),
    (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    (["--seeds", "1,x"], "expected comma-separated ints"),
    (["--resume", "nowhere"], "run folder nowhere does not exist"),
    (["--resume", "x", "--out", "y"], "drop --preset, --out and --overwrite"),
    (["--distributed"], "--distributed needs --out DIR"),
])
def test_bad_flags_fail_in_one_line_before_any_work(script, capsys, flags, fragment):
    try:
        code = script.main(flags)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1


def test_a_bad_flag_is_refused_before_jax_is_imported():
    code = ("import runpy, sys; sys.argv = ['train.py', '--steps', '10']\n"
            "try:\n    runpy.run_path('scripts/train.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 2 and 'jax' not in sys.modules, sys.modules.get('jax')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=child_env(), capture_output=True)


def test_default_out_is_a_new_folder_and_latest_points_to_it(script, offline_data, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert script.main(FAST + ["--dataset", "fashion_mnist"]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "records in runs/" in out
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    assert run_dir.name.endswith("-fashion_mnist") and offline_data == ["fashion_mnist"]
    assert (tmp_path / "runs" / "latest").resolve() == run_dir.resolve()
    assert json.loads((run_dir / records.SUMMARY).read_text())["status"] == "complete"
    assert script.main(["--resume", "runs/latest"]) == 0  # finished: nothing to do
    assert "already ran all 40 steps" in capsys.readouterr().err


def test_a_default_run_that_fails_before_writing_leaves_no_folder(script, tmp_path, capsys, monkeypatch):
    from jaxmlp import data

    def offline(name, **kwargs):
        raise data.DataError("cannot get mnist: offline")

    monkeypatch.setattr(data, "load", offline)
    monkeypatch.chdir(tmp_path)
    assert script.main(FAST) == 1
    assert "error: cannot get mnist: offline" in capsys.readouterr().err
    assert not any((tmp_path / "runs").iterdir())


def test_resume_refuses_what_defines_the_run_and_a_used_out(script, offline_data, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert script.main(FAST + ["--out", out, "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet prints nothing on success
    assert script.main(["--resume", out, "--learning-rate", "0.1"]) == 2
    assert "drop --learning-rate" in capsys.readouterr().err
    assert script.main(FAST + ["--out", out]) == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_at_a_chunk_and_resume_finishes_the_run(tmp_path):
    """A real process: SIGTERM mid-run exits 143 with a checkpoint; --resume completes it."""
    wrapper = ("import runpy, sys; sys.path.insert(0, 'tests'); from conftest import synthetic; "
               "import jaxmlp.data as d; d.load = lambda *a, **k: synthetic(300, 60); "
               "sys.argv = ['train.py'] + sys.argv[1:]; "
               "runpy.run_path('scripts/train.py', run_name='__main__')")
    out = str(tmp_path / "run")
    args = [sys.executable, "-c", wrapper, "--hidden", "16", "--batch-size", "50", "--steps", "4000",
            "--eval-every", "20", "--log-every", "20", "--out", out]
    proc = subprocess.Popen(args, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first log line: training is under way
        if line.startswith("20:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "interrupted at step" in err and f"--resume {out}" in err
    stopped = json.loads((tmp_path / "run" / records.SUMMARY).read_text())
    assert stopped["status"] == "interrupted" and 20 <= stopped["steps"] < 4000
    assert os.listdir(tmp_path / "run" / records.CHECKPOINTS) == [str(stopped["steps"])]
    done = subprocess.run([sys.executable, "-c", wrapper, "--resume", out, "--quiet"], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / records.SUMMARY).read_text())
    assert summary["status"] == "complete" and summary["resumed_from_step"] == stopped["steps"]
