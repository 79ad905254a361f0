"""The command-line entry points: flag validation and an end-to-end run on mock data."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")


@pytest.mark.parametrize("flags, fragment", [
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--learning-rate", "-0.1"], "learning_rate must be a positive finite number"),
    (["--steps", "1000", "--eval-every", "300"], "eval_every (300) must divide steps (1000)"),
    (["--dataset", "cifar10"], "accepted: mnist, fashion_mnist, kmnist"),
    (["--hidden", "200,x"], "expected comma-separated integers"),
])
def test_bad_flags_fail_in_one_line_before_any_work(tmp_path, flags, fragment):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, TRAIN, *flags, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not out.exists()  # nothing was started
    assert time.perf_counter() - t0 < 15  # rejected before JAX or TFDS are loaded


def test_every_config_field_has_a_flag():
    from jaxmlp.config import Config
    import dataclasses
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import train as script
    finally:
        sys.path.pop(0)
    flags = {a.dest for a in script.parser()._actions}
    assert {f.name for f in dataclasses.fields(Config)} <= flags
    assert {"out", "resume", "quiet", "distributed"} <= flags


def test_train_script_end_to_end_on_mock_data(tmp_path, monkeypatch, capsys):
    """scripts/train.py on tfds.testing.mock_data writes every output of a run."""
    import tensorflow_datasets as tfds

    from jaxmlp import plot

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import train as script
    finally:
        sys.path.pop(0)
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


def test_resume_refuses_flags_that_change_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"steps": 200, "eval_every": 100, "log_every": 100}))
    proc = subprocess.run([sys.executable, TRAIN, "--resume", str(run_dir), "--steps", "400",
                           "--batch-size", "50"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --resume continues the saved run; drop --batch-size, --steps"


def test_quiet_prints_nothing_on_success(tmp_path, capsys):
    import tensorflow_datasets as tfds

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import train as script
    finally:
        sys.path.pop(0)
    argv = ["--steps", "20", "--eval-every", "10", "--log-every", "10", "--hidden", "16",
            "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "run"), "--compile-cache", "",
            "--quiet"]
    with tfds.testing.mock_data(num_examples=120):
        assert script.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "run" / "summary.json").exists()
