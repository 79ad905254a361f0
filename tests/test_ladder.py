"""The ladder: its statistics, table, JSON and error bars from hand-made results (fast), and
the script end to end on tiny synthetic data (slow)."""

import json
import math
import sys

import numpy as np
import pytest
from conftest import ROOT, synthetic

from jaxmlp import ladder
from jaxmlp.config import GORNER_MNIST, PRESETS, Config

NAN = math.nan


def _summary(seeds, finals, bests, losses, diverged=()):
    """What ``run.train_and_evaluate`` reports for an ensemble of ``seeds``: a diverged member
    scores NaN at the end (its loss +inf) but keeps the best accuracy it had before."""
    return {"steps": 300, "final_test_loss": np.asarray(losses, np.float32),
            "members": [{"name": f"seed {s}", "seed": s, "learning_rate": None,
                         "status": "diverged" if s in diverged else "complete",
                         "first_nonfinite_step": 120 if s in diverged else None,
                         "final_test_accuracy": f, "best_test_accuracy": b}
                        for s, f, b in zip(seeds, finals, bests)]}


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_table_json_and_error_bars_are_the_spread_over_seeds(tmp_path):
    """Catches a population std (n) for the sample std (n - 1), a diverged seed averaged in or
    its NaN leaking into the means, error bars that are not mean ± std, and rungs out of order."""
    seeds = (0, 1, 2)
    relu = _summary(seeds, [0.86, 0.88, 0.87], [0.87, 0.89, 0.88], [0.40, 0.36, 0.38])
    softmax = _summary(seeds, [0.80, NAN, 0.84], [0.83, 0.50, 0.85], [0.70, math.inf, 0.50], diverged=(1,))
    lost = _summary(seeds, [NAN] * 3, [0.3] * 3, [math.inf] * 3, diverged=seeds)
    config = lambda name: Config.from_preset(name, seeds=seeds, steps=300, eval_every=100, log_every=300)
    rungs = {name: ladder.rung_result(config(name), s, tmp_path / name, 12.0)
             for name, s in (("softmax", softmax), ("relu", relu), ("sigmoid", lost))}
    d = {"dataset": "mnist", "presets": ["softmax", "sigmoid", "relu"], "seeds": list(seeds), "steps": 300,
         "batch_size": 100, "eval_every": 100, "rungs": rungs, "environment": {"backend": "cpu"},
         "data": {"version": "3.0.1", "source": "test", "train_split": "train", "test_split": "test",
                  "train_examples": 1000, "test_examples": 303}, "wall_seconds": 40.0}

    expect = {"relu": [0.86, 0.88, 0.87], "softmax": [0.80, 0.84]}
    for name, finals in expect.items():
        s = rungs[name]["final_test_accuracy"]
        assert s["n"] == len(finals) and s["mean"] == pytest.approx(np.mean(finals))
        assert s["std"] == pytest.approx(np.std(finals, ddof=1))
        assert (s["min"], s["max"]) == (min(finals), max(finals))
    assert rungs["softmax"]["best_test_accuracy"]["mean"] == pytest.approx(0.84)  # not the diverged 0.50
    assert rungs["softmax"]["final_test_loss"]["mean"] == pytest.approx(0.60)
    assert rungs["softmax"]["diverged"] == [1] and rungs["sigmoid"]["diverged"] == [0, 1, 2]
    assert rungs["sigmoid"]["final_test_accuracy"]["n"] == 0
    assert rungs["relu"]["gorner_mnist_accuracy"] == GORNER_MNIST["relu"]

    ladder.write(tmp_path, d)
    saved = json.loads((tmp_path / "ladder.json").read_text())
    assert saved["rungs"]["sigmoid"]["final_test_accuracy"]["mean"] is None  # NaN is written as null
    assert saved["rungs"]["relu"]["members"][1]["final_test_accuracy"] == pytest.approx(0.88)
    md = (tmp_path / "ladder.md").read_text()
    assert md == ladder.markdown(saved)  # the table is the JSON's
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "/3 |" in line]
    assert [r[0] for r in rows] == ["| softmax", "| sigmoid", "| relu"]
    relu_acc = rungs["relu"]["final_test_accuracy"]
    assert rows[2][1] == f"{relu_acc['mean']:.4f} ± {relu_acc['std']:.4f}" == "0.8700 ± 0.0100"
    assert rows[0][4] == "1/3" and rows[1][1] == "n/a" and rows[1][4] == "3/3"
    assert rows[2][-1] == f"{GORNER_MNIST['relu']} |"
    assert "3 seeds (0, 1, 2)" in md and "300 steps of batch 100" in md
    assert _png_size(tmp_path / "ladder.png")[0] > 500

    fig = ladder.figure(saved)
    for ax, metric in zip(fig.axes, ("final_test_accuracy", "final_test_loss")):
        kept = [n for n in d["presets"] if rungs[n][metric]["n"]]  # a bar where a seed is left
        bars = [container.lines[2][0].get_segments()[0] for container in ax.containers]
        assert [b[0][0] for b in bars] == pytest.approx([d["presets"].index(n) + 0.25 for n in kept])
        for ((_, lo), (_, hi)), name in zip(bars, kept):  # mean ± std
            s = rungs[name][metric]
            assert (lo, hi) == pytest.approx((s["mean"] - s["std"], s["mean"] + s["std"]))
        seed_dots = [sorted(line.get_ydata()) for line in ax.lines if line.get_color() == "0.6"]
        want = [sorted(m[metric] for m in rungs[n]["members"] if m["status"] != "diverged")
                for n in d["presets"]]
        assert seed_dots == [pytest.approx(w) for w in want]


def test_the_committed_ladder_table_is_its_json():
    """docs/ladder-fashion-mnist.md is what ``markdown`` makes of the committed JSON (the long
    run's results: 5 rungs x 4 seeds x 10,000 steps), every rung finite."""
    d = json.loads((ROOT / "docs" / "ladder-fashion-mnist.json").read_text(encoding="utf-8"))
    assert (ROOT / "docs" / "ladder-fashion-mnist.md").read_text(encoding="utf-8") == ladder.markdown(d)
    assert d["presets"] == list(PRESETS) and len(d["seeds"]) == 4 and d["steps"] == 10_000
    assert all(r["final_test_accuracy"]["n"] == 4 for r in d["rungs"].values())


def _script():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import ladder as script
    finally:
        sys.path.pop(0)
    return script


@pytest.mark.parametrize("flags, fragment", [
    (["--seeds", "4"], None),  # a list of one seed (4), not a count: valid
    (["--seeds", "0,x"], "invalid literal"),
    (["--seeds", "1,1"], "seeds repeat"),
    (["--presets", "relu,tanh"], "unknown preset 'tanh'"),
    (["--steps", "1000", "--eval-every", "300"], "eval_every (300) must divide steps (1000)"),
])
def test_script_checks_flags_before_any_work(tmp_path, capsys, flags, fragment, monkeypatch):
    script = _script()
    monkeypatch.setattr(ladder, "run_ladder", lambda *a, **kw: kw)  # no training here
    assert script.main([*flags, "--out", str(tmp_path / "out")]) == (2 if fragment else 0)
    assert fragment is None or fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_script_runs_each_rung_as_one_ensemble_and_writes_the_three_files(tmp_path, monkeypatch, capsys):
    """Catches rungs skipped, reordered or run seed by seed, seeds read as a count, and a table
    that is not the spread of the rungs' own run records."""
    from jaxmlp import data

    monkeypatch.setattr(data, "load", lambda *a, **kw: synthetic(n_train=600, n_test=101))
    out = tmp_path / "ladder"
    rungs = ["relu-lrdecay-dropout", "softmax"]  # the most and the fewest parts; each compiles for long
    argv = ["--seeds", "3,5", "--presets", ",".join(rungs), "--steps", "40", "--eval-every", "20",
            "--quiet", "--out", str(out)]
    assert _script().main(argv) == 0
    assert capsys.readouterr().out.strip() == f"{out}/ladder.md"
    d = json.loads((out / "ladder.json").read_text())
    assert d["presets"] == rungs == list(d["rungs"]) and d["seeds"] == [3, 5] and d["steps"] == 40
    for name, rung in d["rungs"].items():
        summary = json.loads((out / name / "summary.json").read_text())  # one run: both seeds
        assert [m["seed"] for m in summary["members"]] == [3, 5] and rung["diverged"] == []
        assert Config.from_dict(rung["config"]) == Config.from_preset(
            name, seeds=(3, 5), steps=40, eval_every=20, log_every=40)
        finals = [m["final_test_accuracy"] for m in summary["members"]]
        assert rung["final_test_accuracy"]["mean"] == pytest.approx(np.mean(finals))
        assert rung["final_test_accuracy"]["std"] == pytest.approx(np.std(finals, ddof=1))
        assert rung["final_test_loss"]["mean"] == pytest.approx(np.mean(summary["final_test_loss"]))
    assert min(r["final_test_accuracy"]["min"] for r in d["rungs"].values()) > 0.5  # they learned
    assert (out / "ladder.md").read_text() == ladder.markdown(d)
    assert _png_size(out / "ladder.png")[0] > 500
