"""Tests for jaxmlp.notebook and docs/notebooks/seed.ipynb.

The notebook is executed by nbclient in an ipykernel kernel, short (parameters
injected in a cell after its "parameters" cell, papermill-style), on learnable
IDX files written here: no download, no Debian package.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import sys

import nbclient
import nbformat
import numpy as np
import pytest

from jaxmlp import data, idx, live, notebook, plot, report
from jaxmlp.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "docs", "notebooks", "seed.ipynb")
PNG = b"\x89PNG\r\n\x1a\n"


# --- helpers ---------------------------------------------------------------------------------

def write_learnable_idx(folder, n_train=1200, n_test=300, seed=0):
    """Four IDX files of a task a small MLP learns in a few hundred steps: each class is a
    bright horizontal band at its own rows, under uniform noise; 15% of the labels are
    then redrawn at random, so no model scores above ~0.87 + noise on the test split."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c: 5 + 2 * c, 4:24] = 255
        flip = rng.random(n) < 0.15
        labels[flip] = rng.integers(0, 10, flip.sum())
        return images, labels

    arrays = dict(zip(("train_images", "train_labels"), split(n_train)))
    arrays.update(zip(("test_images", "test_labels"), split(n_test)))
    for role, fname in idx.FILES.items():
        a = arrays[role]
        header = (0x0800 | a.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
        with open(os.path.join(folder, fname), "wb") as f:
            f.write(gzip.compress(header + a.tobytes(), compresslevel=1))
    return str(folder)


def with_parameters(nb, **params):
    """A copy of ``nb`` without its saved outputs and with a cell setting ``params`` right
    after its "parameters" cell."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A "python3" kernelspec for this very interpreter, first on JUPYTER_PATH: a user's or
    the system's kernelspec of that name could otherwise start a Python without jaxmlp."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxmlp tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def execute(nb, cwd, kernel_name):
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def error_outputs(nb):
    return [(i, o) for i, c in enumerate(nb.cells) for o in c.get("outputs", [])
            if o.output_type == "error"]


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# --- the live reporter -------------------------------------------------------------------------

def test_outside_jupyter_the_reporter_is_the_progress_bar():
    assert not notebook.in_jupyter()
    assert type(notebook.reporter()) is report.Reporter
    assert type(notebook.reporter(quiet=True)) is report.Reporter


def _chunk(rep, step, k=1, extra=True, layers=5):
    acc = np.full(k, 0.5 + step / 4000)
    extras = {}
    if extra:
        pct = np.sort(np.random.default_rng(step).normal(size=(k, layers, 7)), axis=-1)
        extras = dict(train_loss=np.full(k, 1.0 / step), train_accuracy=acc + 0.05,
                      weight_percentiles=pct[0] if k == 1 else pct,
                      bias_percentiles=pct[0] / 10 if k == 1 else pct / 10)
    rep.chunk(step, acc, 2 - acc, np.ones(k, bool), **extras)


def _timed_run(n_chunks, chunk_seconds, frame_seconds, **kwargs):
    """A reporter fed ``n_chunks`` chunks ``chunk_seconds`` apart on a fake clock, each frame
    taking ``frame_seconds``; returns it (closed) and the clock time each frame began."""
    clock, began = FakeClock(), []

    def display(png):
        assert png.startswith(PNG)
        began.append(clock.now)
        clock.now += frame_seconds

    rep = notebook.LiveReporter(quiet=True, display=display, clock=clock, **kwargs)
    rep.start(Config(steps=100 * n_chunks, eval_every=100))
    for i in range(1, n_chunks + 1):
        clock.now += chunk_seconds
        _chunk(rep, 100 * i)
        # The budget holds, but for the first frame's cost above its estimate.
        overrun = max(0.0, frame_seconds - rep.FIRST_FRAME_ESTIMATE)
        assert rep.draw_seconds <= rep.max_share * clock.now + overrun + 1e-9
    rep.close()
    return rep, began


def test_live_reporter_draws_at_most_every_min_interval():
    # Free frames: only min_interval limits them, once the budget covers the first
    # frame's estimate (0.15 s at 3%: 5 s in).
    rep, began = _timed_run(80, 0.1, 0.0, min_interval=0.5, max_share=0.03)
    assert 5.0 <= began[0] < 5.0 + 0.1 + 1e-9
    gaps = np.diff(began[:-1])
    assert (gaps >= 0.5 - 1e-9).all() and (gaps < 0.6 + 1e-9).all()
    assert rep.frames == len(began) and rep._pending is False


def test_the_default_throttle_is_every_half_second_and_two_percent():
    """The README's figures. Free frames: the 0.5 s interval alone spaces them, once 2% of
    the time covers the first frame's 0.15 s estimate (7.5 s in). 1 s frames: frame k
    (k >= 1) waits until 2% of the time covers k + 1 of them (100 s, 150 s)."""
    rep, began = _timed_run(100, 0.1, 0.0)
    assert 7.5 <= began[0] < 7.5 + 0.1 + 1e-9
    assert (np.diff(began[:-1]) >= 0.5 - 1e-9).all() and (np.diff(began[:-1]) < 0.6 + 1e-9).all()
    rep, began = _timed_run(1600, 0.1, 1.0)
    assert len(began) == 4  # ... and the last chunk's at close
    assert 100.0 - 1e-9 <= began[1] < 100.2 and 150.0 - 1e-9 <= began[2] < 150.2, began


def test_slow_frames_are_drawn_less_often_and_the_last_chunk_always():
    rep, began = _timed_run(1000, 0.1, 1.0, max_share=0.03)  # 100 s of chunks, 1 s frames
    # Frame k (k >= 1) waits until 3% of the time covers k + 1 frames of 1 s: at 66.7 s and
    # 100 s; the first waits for its estimate (5 s); close draws the last chunk.
    assert began[0] >= 5.0
    for k, t in enumerate(began[1:-1], 1):
        assert t >= (k + 1) / 0.03 - 1e-9
    assert rep.frames == len(began) == 4
    assert began[-1] > 100.0 and rep._rows[-1]["step"] == 100_000


def test_close_leaves_the_last_frame_to_finish_when_asked():
    frames = []
    rep = notebook.LiveReporter(quiet=True, display=frames.append, clock=FakeClock())
    rep.draw_at_close = False
    rep.start(Config(steps=300, eval_every=100))
    for step in (100, 200, 300):
        _chunk(rep, step)
    rep.close()
    assert frames == []  # no time passed: no budget, and close does not draw
    history = {"train_step": np.arange(1, 301), "train_loss": np.linspace(2, 0.1, 300),
               "train_accuracy": np.linspace(0.1, 0.9, 300), "test_step": np.arange(4) * 100,
               "test_loss": np.asarray([2.3, 1, 0.5, 0.4]), "test_accuracy": np.asarray([0.1, 0.7, 0.8, 0.85])}
    rep.finish(history)
    assert len(frames) == 1 and [r["step"] for r in rep._rows] == [0, 100, 200, 300]
    ax_acc = rep.figure().axes[0]
    assert [line.get_label() for line in ax_acc.lines] == ["train (mean of each chunk)", "test"]
    train = ax_acc.lines[0].get_ydata()  # each chunk's mean, at its end; none at step 0
    want = history["train_accuracy"].reshape(3, 100).mean(axis=1)
    assert np.isnan(train[0]) and np.allclose(train[1:], want)


@pytest.mark.parametrize("k", [1, 3])
def test_live_frame_draws_the_extras_when_given(k):
    rep = notebook.LiveReporter(quiet=True, display=lambda png: None)
    rep.start(Config(steps=1000, eval_every=100, **({"seeds": tuple(range(k))} if k > 1 else {})))
    _chunk(rep, 100, k=k, extra=False)  # chunks from a run that reports no extras...
    for step in range(200, 600, 100):
        _chunk(rep, step, k=k)  # ...and from one that does
    fig = rep.figure()
    ax_acc, ax_loss, ax_w, ax_b = fig.axes
    for ax in (ax_acc, ax_loss):
        labels = [line.get_label() for line in ax.lines]
        assert labels[0] == "train (mean of each chunk)" and labels[-1].startswith("test")
        train = ax.lines[0].get_ydata()
        assert np.isnan(train[0]) and np.isfinite(train[1:]).all()  # a gap where none came
        assert len(ax.lines[-1].get_xdata()) == 5
    for ax in (ax_w, ax_b):
        assert [line.get_label() for line in ax.lines] == [f"layer {i}" for i in range(1, 6)]
    assert "step 500 of 1,000" in fig._suptitle.get_text()
    assert png_size(plot.png_bytes(fig)) == (800, 512)


def test_live_frame_without_extras_shows_test_curves_and_says_what_is_missing():
    rep = notebook.LiveReporter(quiet=True, display=lambda png: None)
    rep.start(Config(steps=1000, eval_every=100))
    for step in range(100, 400, 100):
        _chunk(rep, step, extra=False)
    ax_acc, _, ax_w, _ = rep.figure().axes
    assert [line.get_label() for line in ax_acc.lines] == ["test"]
    assert not ax_w.lines and "not reported" in ax_w.texts[0].get_text()


def test_frames_replace_one_output_through_a_display_handle(monkeypatch):
    import IPython.display

    calls = []

    class Handle:
        def update(self, obj):
            calls.append(("update", obj.data))

    def display(obj, display_id=None):
        calls.append(("display", display_id, obj.data))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    show = live._DisplayHandle()
    for png in (b"a", b"b", b"c"):
        show(PNG + png)
    assert calls == [("display", True, PNG + b"a"), ("update", PNG + b"b"), ("update", PNG + b"c")]


def png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# --- one-line errors -----------------------------------------------------------------------------

def test_unloadable_data_stops_with_the_scripts_one_line(tmp_path):
    config = Config(dataset="mnist", data_dir=str(tmp_path / "data"),
                    manual_dir=str(tmp_path / "missing"), steps=100)
    with pytest.raises(data.DataError) as direct:
        data.load("mnist", data_dir=config.data_dir, manual_dir=config.manual_dir)
    for call in (notebook.load, notebook.train):
        with pytest.raises(notebook.Stopped) as stopped:
            call(config)
        assert str(stopped.value) == f"error: {direct.value}"
        assert stopped.value._render_traceback_() == [f"error: {direct.value}"]
        assert stopped.value.__cause__ is None and stopped.value.__suppress_context__


def test_bad_config_stops_with_one_line():
    with pytest.raises(notebook.Stopped, match=r"^error: eval_every \(300\) must divide steps"):
        notebook.config("relu", steps=1000, eval_every=300)


# --- the notebook ------------------------------------------------------------------------------

def test_committed_notebook_holds_a_full_run():
    """The copy in docs/ renders on code hosts: every code cell ran, in order, without errors,
    at the seed's full schedule; the chart, the two figures and the ladder are images; and its
    outputs are the run the README says it holds (dataset, steps; the ladder's rungs, seeds
    and steps), so a notebook rerun shorter or with fewer seeds or rungs fails."""
    nb = read_notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not error_outputs(nb)
    params = code[0]
    assert "parameters" in params.metadata.tags and "steps = 10_000" in params.source
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 5  # an example, the live chart, accuracy, cross-entropy, the ladder
    final = re.fullmatch(r"final test accuracy (0\.\d{4})\n", text_of(code[-1]))
    assert final and 0.8 < float(final.group(1)) < 1
    # The README's "a full run on Fashion-MNIST (10,000 steps; ladder: 5 rungs × 4 seeds ×
    # 10,000 steps)", read from the outputs: a shorter run or ladder, fewer seeds or rungs fail.
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = re.sub(r"\s+", " ", f.read())
    claim = re.search(r"The committed copy holds the outputs of a full run on Fashion-MNIST \(([\d,]+) "
                      r"steps; ladder: (\d+) rungs × (\d+) seeds × ([\d,]+) steps\)", readme)
    assert claim, "the README's sentence on the committed notebook changed shape"
    steps, rungs, seeds, ladder_steps = (int(g.replace(",", "")) for g in claim.groups())
    data_cell = next(c for c in code if "notebook.load(" in c.source)
    assert text_of(data_cell).startswith("fashion_mnist ")
    train_cell = next(c for c in code if "notebook.train(" in c.source)
    assert re.search(rf"^final test accuracy {final.group(1)} after {steps} steps$", text_of(train_cell), re.M)
    ladder_cell = next(c for c in code if "notebook.ladder(" in c.source)
    out = text_of(ladder_cell)
    assert out.startswith(f"{rungs} rungs x {seeds} seeds, {ladder_steps:,} steps each, on fashion_mnist\n")
    lines = re.findall(r"^([\w-]+): best member \(seed \d+, lr [\d.e-]+\): final test accuracy "
                       r"0\.\d{4} after (\d+) steps; ", out, re.M)
    assert [name for name, _ in lines] == list(notebook.LADDER) and len(lines) == rungs, out
    assert all(int(n) == ladder_steps for _, n in lines), out
    table_cell = next(c for c in code if "notebook.ladder_table(" in c.source)
    table = next(o.data["text/markdown"] for o in table_cell.outputs if "text/markdown" in o.get("data", {}))
    members = re.findall(r"^\| ([\w-]+) \| (\d+)(?: \(\d+ diverged\))? \|", table, re.M)
    assert members == [(name, str(seeds)) for name in notebook.LADDER], table


def test_notebook_runs_short_on_learnable_data(tmp_path, kernel):
    manual = write_learnable_idx(tmp_path / "idx")
    nb = with_parameters(read_notebook(), dataset="mnist", manual_dir=manual,
                         data_dir=str(tmp_path / "data"), steps=300, eval_every=50,
                         log_every=100, ladder_seeds=(0, 1), ladder_steps=100,
                         ladder_presets=("softmax", "relu-lrdecay-dropout"))  # SGD; Adam, dropout
    execute(nb, tmp_path, kernel)  # raises CellExecutionError on any cell error
    assert not error_outputs(nb)
    final = re.fullmatch(r"final test accuracy (\d\.\d{4})\n", text_of(nb.cells[-1]))
    assert final, text_of(nb.cells[-1])
    assert 0.6 < float(final.group(1)) < 0.97  # chance is 0.1; label noise caps it near 0.87
    train_cell = next(c for c in nb.cells if "notebook.train(" in c.source)
    assert "final test accuracy" in text_of(train_cell)
    live = [o for o in train_cell.outputs if "image/png" in o.get("data", {})]
    assert len(live) == 1  # one chart, redrawn in place
    ladder_cell = next(c for c in nb.cells if "notebook.ladder(" in c.source)
    assert text_of(ladder_cell).count("best member") == 2  # a line per rung


def test_notebook_on_unloadable_data_stops_at_the_data_cell_with_one_line(tmp_path, kernel):
    missing = str(tmp_path / "no-such-folder")
    nb = with_parameters(read_notebook(), dataset="mnist", manual_dir=missing,
                         data_dir=str(tmp_path / "data"))
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        execute(nb, tmp_path, kernel)
    errors = error_outputs(nb)
    assert len(errors) == 1
    at, err = errors[0]
    assert "notebook.load(" in nb.cells[at].source
    with pytest.raises(data.DataError) as direct:  # what the script would print after "error: "
        data.load("mnist", data_dir=str(tmp_path / "data"), manual_dir=missing)
    assert err.traceback == [f"error: {direct.value}"]
    assert all(c.get("execution_count") is None for c in nb.cells[at + 1:] if c.cell_type == "code")
