"""The ladder: every preset with N seeds, its three files, diverged members, the script."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, child_env, synthetic, synthetic_history

from jaxmlp import ladder, records
from jaxmlp.config import GORNER_MNIST, PRESETS, Config

SCRIPT = str(ROOT / "scripts" / "ladder.py")
QUICK = dict(steps=40, eval_every=20, log_every=20)


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_ladder_trains_every_preset_as_one_ensemble_and_writes_three_files(tmp_path):
    """Catches rungs that skip a preset, run seeds one by one (no ensemble), aggregate the
    wrong values (compared with each rung's own summary.json), or mislabel his figures."""
    lines = []
    out = ladder.run_ladder("mnist", out_dir=tmp_path, seeds=2, data=synthetic(), log=lines.append,
                            **QUICK)
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert saved["presets"] == list(PRESETS) == list(out["rungs"]) and set(saved["rungs"]) == set(PRESETS)
    assert saved["seeds"] == [0, 1] and saved["steps"] == 40 and saved["dataset"] == "mnist"
    assert saved["wall_seconds"] > 0 and saved["data"]["train_examples"] == 1000
    for name, rung in saved["rungs"].items():
        for key in ("config", "description", "run_dir", "members", "diverged", "final_test_accuracy",
                    "best_test_accuracy", "final_test_loss", "gorner_mnist_accuracy", "wall_seconds"):
            assert key in rung, (name, key)
        config = Config.from_dict(rung["config"])
        assert config == Config.from_preset(name, dataset="mnist", seeds=(0, 1), **QUICK)
        assert rung["gorner_mnist_accuracy"] == GORNER_MNIST[name]
        # One run folder per rung, holding one ensemble of both seeds.
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert [m["seed"] for m in summary["members"]] == [0, 1]
        with np.load(tmp_path / name / "history.npz") as h:
            assert h["test_accuracy"].shape == (2, 3)
        members = rung["members"]
        assert [m["status"] for m in members] == ["finite", "finite"]
        finals = [m["final_test_accuracy"] for m in members]
        np.testing.assert_allclose(finals, summary["final_test_accuracy"], rtol=1e-12)
        np.testing.assert_allclose([m["best_test_accuracy"] for m in members],
                                   summary["best_test_accuracy"], rtol=1e-12)
        np.testing.assert_allclose([m["final_test_loss"] for m in members],
                                   summary["final_test_loss"], rtol=1e-12)
        acc = rung["final_test_accuracy"]
        assert acc["n"] == 2 and acc["mean"] == pytest.approx(np.mean(finals))
        assert acc["std"] == pytest.approx(np.std(finals, ddof=1))
        assert acc["min"] == min(finals) and acc["max"] == max(finals)
    md = (tmp_path / "ladder.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "±" in line]
    assert [row.split("|")[1].strip() for row in rows] == list(PRESETS)
    for name, row in zip(PRESETS, rows):
        r = saved["rungs"][name]
        assert f"{r['final_test_accuracy']['mean']:.4f} ± {r['final_test_accuracy']['std']:.4f}" in row
        assert row.rstrip(" |").endswith(GORNER_MNIST[name])
    assert "Görner's figure (his, MNIST)" in md and "2 seeds (0, 1)" in md and "40 steps" in md
    assert _png_size(tmp_path / "ladder.png") == ladder.FIGURE_SIZE
    assert len(lines) == 2 * len(PRESETS)  # a line as each rung starts and ends
    # Rewriting from the run folders, without training, gives the same files back.
    md_before = md
    (tmp_path / "ladder.md").unlink()
    (tmp_path / "ladder.png").unlink()
    ladder.rewrite(tmp_path)
    assert json.loads((tmp_path / "ladder.json").read_text()) == saved
    assert (tmp_path / "ladder.md").read_text() == md_before
    assert _png_size(tmp_path / "ladder.png") == ladder.FIGURE_SIZE
    # A second ladder into the same folder is refused before any work, unless overwrite.
    with pytest.raises(records.RecordError, match="overwrite"):
        ladder.run_ladder("mnist", out_dir=tmp_path, seeds=2, data=synthetic(), **QUICK)


def test_member_results_report_divergence_and_leave_it_out_of_the_means():
    """Catches a diverged member averaged in (NaN means) or reported as finite."""
    h = synthetic_history(steps=300, eval_every=50, members=3)
    h["train_loss"][1, 119:] = np.inf  # member 1 diverges at step 120
    h["train_accuracy"][1, 119:] = np.nan
    h["test_loss"][1, 3:] = np.inf  # evaluations at 150, 200, ...
    h["test_accuracy"][1, 3:] = np.nan
    c = Config(steps=300, eval_every=50, log_every=300, seeds=(0, 1, 2))
    rung = ladder.rung_result(c, h, "/tmp/x", 1.0)
    members = rung["members"]
    assert [m["status"] for m in members] == ["finite", "diverged", "finite"]
    assert members[1]["first_nonfinite_step"] == 120 and rung["diverged"] == [1]
    assert math.isnan(members[1]["final_test_accuracy"])
    assert members[1]["best_test_accuracy"] == pytest.approx(float(np.max(h["test_accuracy"][1, :3])))
    finals = h["test_accuracy"][[0, 2], -1].astype(np.float64)
    assert rung["final_test_accuracy"]["n"] == 2
    assert rung["final_test_accuracy"]["mean"] == pytest.approx(finals.mean())
    assert rung["final_test_loss"]["mean"] == pytest.approx(h["test_loss"][[0, 2], -1].mean())


def test_a_rung_whose_every_member_diverges_is_reported_and_the_ladder_goes_on(tmp_path):
    out = ladder.run_ladder("mnist", out_dir=tmp_path, seeds=2, data=synthetic(), presets=("relu",),
                            learning_rate=1e4, **QUICK)
    rung = out["rungs"]["relu"]
    assert rung["diverged"] == [0, 1] and rung["final_test_accuracy"]["n"] == 0
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert saved["rungs"]["relu"]["final_test_accuracy"]["mean"] is None  # NaN is written as null
    md = (tmp_path / "ladder.md").read_text()
    assert "| n/a |" in md and "| 2/2 |" in md and "Diverged members:" in md
    assert _png_size(tmp_path / "ladder.png") == ladder.FIGURE_SIZE


def test_ladder_script_end_to_end_on_mock_data(tmp_path, capsys):
    import tensorflow_datasets as tfds

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import ladder as script
    finally:
        sys.path.pop(0)
    out = tmp_path / "ladder"
    argv = ["--dataset", "fashion_mnist", "--seeds", "2", "--presets", "softmax", "--steps", "20",
            "--eval-every", "10", "--log-every", "10", "--data-dir", str(tmp_path / "tfds"),
            "--out", str(out)]
    with tfds.testing.mock_data(num_examples=200):
        assert script.main(argv) == 0
    assert f"{out}/ladder.md" in capsys.readouterr().out
    saved = json.loads((out / "ladder.json").read_text())
    assert list(saved["rungs"]) == ["softmax"] and saved["dataset"] == "fashion_mnist"
    assert saved["data"]["source"] == "mock" and saved["data"]["train_examples"] == 200
    assert len(saved["rungs"]["softmax"]["members"]) == 2
    assert "| softmax |" in (out / "ladder.md").read_text()
    assert _png_size(out / "ladder.png") == ladder.FIGURE_SIZE


@pytest.mark.parametrize("flags, fragment", [
    (["--seeds", "0"], "expected a positive integer"),
    (["--presets", "relu,tanh"], "unknown presets ['tanh']"),
    (["--steps", "1000", "--eval-every", "300"], "eval_every (300) must divide steps (1000)"),
    (["--dataset", "cifar10"], "invalid choice"),
])
def test_ladder_script_rejects_bad_flags_in_one_line_before_any_work(tmp_path, flags, fragment):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, *flags, "--out", str(out)], capture_output=True,
                          text=True, timeout=60, env=child_env())
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not out.exists()


_LADDER_DRIVER = """
import runpy, sys
sys.path.insert(0, {tests!r})
from conftest import synthetic
from jaxmlp import data
data.load = lambda *args, **kwargs: synthetic()
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_ladder_script_gives_each_rungs_ensemble_a_cpu_device_per_core(tmp_path):
    """scripts/ladder.py in a fresh process (JAX not started yet, as for a user): 2 seeds
    on as many CPU devices as there are cores that divide 2. Catches the split never
    applied (the test above runs after JAX started in this process, so it cannot)."""
    from jaxmlp import parallel

    out = tmp_path / "ladder"
    argv = ["--seeds", "2", "--presets", "relu", "--steps", "40", "--eval-every", "20",
            "--log-every", "20", "--quiet", "--out", str(out)]
    code = _LADDER_DRIVER.format(tests=str(ROOT / "tests"), script=SCRIPT, argv=argv)
    env = {k: v for k, v in child_env().items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    devices = parallel.split_count(2, parallel.usable_cores())
    placement = json.loads((out / "relu" / "summary.json").read_text())["placement"]
    assert placement == {"mode": "model" if devices > 1 else "single", "num_devices": devices,
                         "eval_beside": False}
