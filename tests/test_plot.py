"""Figures from histories: valid PNGs of the fixed sizes for every history shape,
the zoom ranges, overlays, and scripts/plot.py on saved run directories."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from conftest import ROOT, child_env, synthetic_history
from jaxmlp import history as hist
from jaxmlp import plot, records, runs
from jaxmlp.runs import RunFiles


def synthetic_misclassified(m: int) -> dict:
    rng = np.random.default_rng(m)
    return {"image": rng.integers(0, 256, (m, 28, 28), dtype=np.uint8),
            "predicted": rng.integers(0, 10, m).astype(np.int32),
            "label": rng.integers(0, 10, m).astype(np.int32)}


def truncated(h: dict, t: int, e: int) -> dict:
    """What an interrupted run leaves: the first t steps and e evaluations."""
    out = {}
    for key, v in h.items():
        if key.startswith("train_"):
            out[key] = v[..., :t]
        elif key.startswith("test_"):
            out[key] = v[..., :e]
        elif key.endswith("_percentiles"):
            out[key] = v[..., :e, :, :]
        else:
            out[key] = v
    return out


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the file is a whole PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} lacks the PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", f"{path} does not end with IEND"
    return struct.unpack(">II", data[16:24])


def assert_figure_file(path: Path) -> None:
    assert png_size(path) == plot.expected_size(path)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == plot.expected_size(path)[::-1]
    # Something was drawn: far more than a blank canvas's one colour.
    rgb = (pixels[..., :3] * 255).astype(np.uint32)
    assert np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).size > 50


def _with_nonfinite(h: dict) -> dict:
    """Diverged at step 151, written as jaxmlp's loop writes a diverged model: losses +inf,
    accuracies NaN from the first bad step (a NaN loss would mean "not run yet")."""
    h = {k: v.copy() for k, v in h.items()}
    h["train_loss"][..., 150:] = np.inf
    h["train_accuracy"][..., 150:] = np.nan
    h["test_loss"][..., 4:] = np.inf
    h["test_accuracy"][..., 4:] = np.nan
    return h


def _minimal(h: dict) -> dict:
    """Only what every history.npz must hold: no train_step, no percentiles."""
    assert hist.REQUIRED == ("train_loss", "train_accuracy", "test_step", "test_loss", "test_accuracy")
    return {k: h[k] for k in hist.REQUIRED}


CASES = {
    "single": lambda: synthetic_history(),
    "one_step_one_eval": lambda: truncated(synthetic_history(), 1, 1),
    "interrupted": lambda: truncated(synthetic_history(), 123, 3),
    "ensemble": lambda: synthetic_history(members=3),
    "ensemble_interrupted": lambda: truncated(synthetic_history(members=4), 77, 2),
    "nan_and_inf": lambda: _with_nonfinite(synthetic_history()),
    "all_nan_test": lambda: {**synthetic_history(), "test_loss": np.full(7, np.nan, np.float32),
                             "test_accuracy": np.full(7, np.nan, np.float32)},
    "minimal_history": lambda: _minimal(synthetic_history()),
    "two_layers": lambda: synthetic_history(layers=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_history_shape_gives_three_pngs_of_the_fixed_size(case, tmp_path):
    wrong = synthetic_misclassified(30)
    written = plot.plot_history(CASES[case](), tmp_path, misclassified=wrong, label=case)
    assert [p.name for p in written] == ["accuracy.png", "cross_entropy.png", "dashboard.png"]
    for p in written:
        assert_figure_file(p)
    assert sorted(os.listdir(tmp_path)) == ["accuracy.png", "cross_entropy.png", "dashboard.png"]


@pytest.mark.parametrize("wrong", [None, 0, 60])
def test_dashboard_size_does_not_depend_on_the_misclassified_digits(wrong, tmp_path):
    misclassified = None if wrong is None else synthetic_misclassified(wrong)
    fig = plot.dashboard_figure(synthetic_history(), misclassified, "run")
    path = plot.save_png(fig, tmp_path / "dashboard.png")
    assert_figure_file(path)


def test_digit_grid_titles_say_predicted_and_true(tmp_path):
    wrong = synthetic_misclassified(30)
    fig = plot.dashboard_figure(synthetic_history(), wrong, "run")
    captions = lambda f: [t.get_text() for ax in f.get_axes() for t in ax.texts]  # noqa: E731
    titles = [c for c in captions(fig) if c.startswith("pred")]  # one caption above each digit
    assert len(titles) == plot.MAX_DIGITS
    assert titles[:3] == [f"pred {p} / true {t}" for p, t in zip(wrong["predicted"][:3], wrong["label"][:3])]
    none = plot.dashboard_figure(synthetic_history(), synthetic_misclassified(0), "run")
    assert not [c for c in captions(none) if c.startswith("pred")]
    assert "no misclassified test digits" in none._suptitle.get_text()


def test_dashboard_has_a_weight_and_a_bias_panel_per_layer():
    fig = plot.dashboard_figure(synthetic_history(layers=3), None, "run")
    titles = {ax.get_title() for ax in fig.get_axes()}
    assert {f"layer {i} {kind}" for i in (1, 2, 3) for kind in ("weights", "biases")} <= titles
    assert "layer 4 weights" not in titles


def test_zoom_panels_use_the_original_and_the_late_test_ranges():
    acc = plot.accuracy_figure(synthetic_history())
    full, zoom = acc.get_axes()
    assert zoom.get_ylim()[0] == pytest.approx(plot.ACCURACY_ZOOM[0])
    assert zoom.get_ylim()[1] == pytest.approx(plot.ACCURACY_ZOOM[1], abs=0.01)
    assert full.get_ylim()[0] < 0.01 and full.get_ylim()[1] > 0.99
    # Late test loss ~0.08 -> zoom to 0.2; ~0.3 -> 1 (2 x median, rounded up to 1, 2, 2.5, 5 x 10^k).
    h = synthetic_history()  # evaluations at steps 0, 50, ..., 300: the late half is 150..300
    for late, top in ((0.08, 0.2), (0.3, 1.0), (0.02, 0.05), (0.12, 0.25)):
        test_loss = np.where(h["test_step"] >= 150, late, 2.3).astype(np.float32)
        test_loss[-1] = 10 * late  # a late outlier moves a median no more than one rank
        _, zoom = plot.cross_entropy_figure({**h, "test_loss": test_loss}).get_axes()
        assert zoom.get_ylim() == pytest.approx((0, top))


def test_overlaid_runs_are_in_the_legend_with_their_final_accuracy():
    runs = [synthetic_history(seed=0), synthetic_history(seed=1, final_test_loss=0.2)]
    fig = plot.accuracy_figure(runs, ["runs/a", "runs/b"])
    texts = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    finals = [float(1 - h["test_loss"][-1] / 2.6) for h in runs]
    assert texts[:2] == [f"runs/a: final test {finals[0]:.4f}", f"runs/b: final test {finals[1]:.4f}"]
    colors = {line.get_color() for line in fig.get_axes()[0].get_lines()}
    assert {"C0", "C1"} <= colors


@pytest.mark.parametrize("figure", [plot.accuracy_figure, plot.cross_entropy_figure])
def test_train_curves_are_thin_per_step_and_test_curves_thick_per_evaluation(figure):
    """The README's table: train per step (thin), test per evaluation (thick), in every
    panel. Catches the two styles swapped, or the curves drawn at the wrong resolution."""
    h = synthetic_history(steps=300, eval_every=50)
    for ax in figure(h).get_axes():
        lines = {len(line.get_xdata()): line.get_linewidth() for line in ax.get_lines()}
        train, test = lines[300], lines[7]  # steps 1..300; evaluations at 0, 50, ..., 300
        assert train < 1 < 2 < test, lines


def test_ensemble_members_are_named_and_the_first_nonfinite_step_is_marked():
    fig = plot.accuracy_figure(synthetic_history(members=3), members=["s0", "s1", "s2"])
    texts = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    assert texts[:3] == ["test, s0", "test, s1", "test, s2"] and texts[3].startswith("mean of 3")
    fig = plot.cross_entropy_figure(_with_nonfinite(synthetic_history()))
    texts = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    assert "first non-finite loss, step 151" in texts


def _marks(ax) -> tuple[list[float], list[float]]:
    """(x of the red dashed lines, sorted x of the diverged-member crosses) drawn on ``ax``."""
    lines = ax.get_lines()
    red = [float(ln.get_xdata()[0]) for ln in lines if ln.get_color() == "red" and ln.get_linestyle() == "--"]
    return red, sorted(float(ln.get_xdata()[0]) for ln in lines if ln.get_marker() == "x")


def test_diverged_members_are_marked_where_the_history_readers_say():
    h = synthetic_history(members=3)
    h["train_loss"][1, 120:] = np.inf  # member 1: train loss from step 121
    h["test_loss"][2, 2:] = np.inf  # member 2: test loss only, from the evaluation at step 100
    assert hist.first_nonfinite_steps(h) == [None, 121, 100]
    fig = plot.cross_entropy_figure(h, members=["a", "b", "c"])
    for ax in fig.get_axes():  # full range and zoom
        assert _marks(ax) == ([100], [100, 121])
    texts = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    assert texts[:3] == ["test, a", "test, b (diverged at step 121)", "test, c (diverged at step 100)"]
    assert "first non-finite loss, step 100" in texts
    dashboard = plot.dashboard_figure(h, None, "ens")
    assert "ensemble of 3, 2 diverged" in dashboard._suptitle.get_text()


def test_a_single_model_gets_the_line_and_no_cross():
    h = synthetic_history()
    h["test_loss"][-1] = np.inf  # the last update blew up: only the last evaluation shows it
    assert hist.first_nonfinite_step(h) == 300
    assert _marks(plot.accuracy_figure(h).get_axes()[0]) == ([300], [])


def test_plotting_imports_neither_jax_nor_tensorflow():
    code = ("import sys, jaxmlp.plot, jaxmlp.records; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'tensorflow'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=child_env(), timeout=120)
    assert done.stdout.strip() == "[]", (
        "importing jaxmlp.plot pulled in " + done.stdout.strip() + "; keep jaxmlp/__init__.py's heavy "
        "imports lazy so redrawing figures from records stays fast")


# --- scripts/plot.py on saved run directories ----------------------------------


def save_run(run_dir: Path, history: dict, misclassified: dict | None = None) -> Path:
    run_dir.mkdir(parents=True)
    files = RunFiles.under(run_dir)
    records.atomic_save_npz(files.history, history)
    summary = {"final_test_accuracy": float(history["test_accuracy"][..., -1].mean())}
    records.atomic_write_json(files.summary, summary)
    if misclassified is not None:
        records.atomic_save_npz(files.misclassified, misclassified)
    return run_dir


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "plot.py"), *args], capture_output=True,
                          text=True, env=child_env(), timeout=300)


def _script_main():
    spec = importlib.util.spec_from_file_location("plot_script", ROOT / "scripts" / "plot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_redraws_one_run_into_its_directory(tmp_path):
    run = save_run(tmp_path / "runs" / "mnist", synthetic_history(), synthetic_misclassified(5))
    done = _script(str(run))
    assert done.returncode == 0, done.stderr
    names = ["accuracy.png", "cross_entropy.png", "dashboard.png"]
    assert done.stdout.split() == [str(run / n) for n in names]
    for n in names:
        assert_figure_file(run / n)


def test_script_overlays_several_runs_into_out(tmp_path, capsys):
    a = save_run(tmp_path / "runs" / "a", synthetic_history(seed=0), synthetic_misclassified(3))
    b = save_run(tmp_path / "runs" / "b", truncated(synthetic_history(members=2, seed=1), 200, 5))
    out = tmp_path / "compare"
    assert _script_main()([str(a), str(b), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["accuracy.png", "cross_entropy.png",
                                       "dashboard-a.png", "dashboard-b.png"]
    for name in os.listdir(out):
        assert_figure_file(out / name)
    # The runs' own directories are left alone.
    assert sorted(os.listdir(a)) == ["history.npz", "misclassified.npz", "summary.json"]
    assert sorted(os.listdir(b)) == ["history.npz", "summary.json"]


def test_figures_never_land_in_another_runs_folder_nor_mix_with_an_older_comparison(tmp_path, capsys):
    """Catches: ``--out`` into another training run's folder (its figures replaced by this
    run's, beside its own summary and history), a comparison that leaves the dashboards of
    the runs an earlier comparison drew there, and ``clear_run`` (``--overwrite``) that
    leaves comparison dashboards in the folder of the run that replaces them."""
    a = save_run(tmp_path / "a", synthetic_history(seed=0))
    b = save_run(tmp_path / "b", synthetic_history(seed=1))
    c = save_run(tmp_path / "c", synthetic_history(seed=2))
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    for argv in ([str(a), "--out", str(b)], [str(a), str(c), "--out", str(b)]):
        assert _script_main()(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"plot.py: error: {b} holds a training run of its own; draw into another folder"
        assert {p.name: p.read_bytes() for p in b.iterdir()} == before
    out = tmp_path / "compare"
    assert _script_main()([str(a), str(b), "--out", str(out)]) == 0
    assert _script_main()([str(b), str(c), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["accuracy.png", "cross_entropy.png",
                                       "dashboard-b.png", "dashboard-c.png"]
    assert _script_main()([str(a), "--out", str(a)]) == 0  # a run's own folder, named twice
    (out / "notes.txt").write_text("mine")
    runs.clear_run(out)
    assert os.listdir(out) == ["notes.txt"]


def test_script_fails_in_one_line_without_a_history(tmp_path):
    good = save_run(tmp_path / "good", synthetic_history())
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _script(str(good), str(empty), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no history.npz in" in done.stderr and str(empty) in done.stderr
    assert not (tmp_path / "out").exists()  # nothing drawn when any run is unreadable
    done = _script(str(good), str(good))
    assert done.returncode == 2 and "--out DIR is required" in done.stderr


# --- the dashboard drawn in a forked child ------------------------------------------------


def _dashboard_pid_recorder(monkeypatch, tmp_path, action=None):
    """Wrap dashboard_figure: note the drawing process's pid, then ``action(pid)``."""
    draw, parent = plot.dashboard_figure, os.getpid()
    log = tmp_path / "pids.txt"

    def dashboard_figure(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if action is not None:
            action(os.getpid() != parent)
        return draw(*args, **kwargs)

    monkeypatch.setattr(plot, "dashboard_figure", dashboard_figure)
    return lambda: [int(p) for p in log.read_text().split()] if log.exists() else []


@pytest.mark.skipif(sys.platform != "linux", reason="the child is forked on Linux only")
def test_the_dashboard_is_drawn_in_a_child_and_the_files_are_the_same(monkeypatch, tmp_path):
    h, wrong = synthetic_history(), synthetic_misclassified(7)
    pids = _dashboard_pid_recorder(monkeypatch, tmp_path)
    forked = plot.plot_history(h, tmp_path / "forked", misclassified=wrong)
    assert len(pids()) == 1 and pids()[0] != os.getpid()  # drawn aside, by another process
    monkeypatch.setattr(plot, "_fork", lambda: None)
    here = plot.plot_history(h, tmp_path / "here", misclassified=wrong)
    assert pids()[1] == os.getpid()
    assert [p.name for p in forked] == [p.name for p in here] == list(plot.FIGURE_SIZES)
    for a, b in zip(forked, here):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.skipif(sys.platform != "linux", reason="the child is forked on Linux only")
def test_a_failed_child_leaves_the_dashboard_to_this_process(monkeypatch, tmp_path):
    def fail_in_child(in_child):
        if in_child:
            raise RuntimeError("the child fails")

    pids = _dashboard_pid_recorder(monkeypatch, tmp_path, fail_in_child)
    paths = plot.plot_history(synthetic_history(), tmp_path / "run", misclassified=synthetic_misclassified(3))
    child, here = pids()
    assert child != os.getpid() and here == os.getpid()
    assert all(p.stat().st_size > 0 for p in paths) and (tmp_path / "run" / "dashboard.png").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the child is forked on Linux only")
def test_an_error_here_stops_the_child_at_once(monkeypatch, tmp_path):
    """The curves fail in this process while the child is still drawing: the error is
    raised, the child is killed and reaped, and it writes no dashboard afterwards."""
    import time

    def linger_in_child(in_child):
        if in_child:
            time.sleep(30)

    pids = _dashboard_pid_recorder(monkeypatch, tmp_path, linger_in_child)

    def accuracy_figure(*args, **kwargs):
        time.sleep(0.5)  # the child has started drawing
        raise ValueError("the curves fail")

    monkeypatch.setattr(plot, "accuracy_figure", accuracy_figure)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="the curves fail"):
        plot.plot_history(synthetic_history(), tmp_path / "run")
    assert time.perf_counter() - t0 < 10
    (child,) = pids()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # gone, and reaped (a zombie would still answer)
    assert not (tmp_path / "run" / "dashboard.png").exists()


def test_partial_writes_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "dashboard.png"
    mine, other = tmp_path / ".dashboard.png.123.ab12cd34.tmp", tmp_path / ".dashboard.png.1234.ab12cd34.tmp"
    for p in (mine, other):
        p.write_bytes(b"partial")
    records.remove_partial_writes(target, 123)
    assert not mine.exists() and other.exists()
