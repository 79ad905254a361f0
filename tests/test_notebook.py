"""jaxmlp.notebook's helpers on synthetic histories, the committed docs/notebooks/seed.ipynb,
and (slow) the notebook executed short in a real kernel on small IDX files written here."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import sys
import types

import numpy as np
import pytest

import jaxmlp
from conftest import ROOT, synthetic, synthetic_history
from jaxmlp import live, notebook, report
from jaxmlp.config import PRESETS, Config

NOTEBOOK = ROOT / "docs" / "notebooks" / "seed.ipynb"


@pytest.fixture
def fake_run(monkeypatch):
    """``jaxmlp.run`` replaced by one whose ``train_and_evaluate`` records its calls and returns
    a synthetic ensemble history (nothing trains)."""
    calls = []

    def train_and_evaluate(config, **kwargs):
        calls.append((config, kwargs))
        members = len(config.seeds)
        return types.SimpleNamespace(history=synthetic_history(steps=60, eval_every=10, members=members))

    fake = types.SimpleNamespace(train_and_evaluate=train_and_evaluate)
    monkeypatch.setitem(sys.modules, "jaxmlp.run", fake)
    monkeypatch.setattr(jaxmlp, "run", fake, raising=False)
    return calls


def test_the_reporter_is_the_live_chart_only_in_jupyter(monkeypatch):
    assert not notebook.in_jupyter()
    assert type(notebook.reporter()) is report.Reporter
    monkeypatch.setattr(notebook, "in_jupyter", lambda: True)
    assert type(notebook.reporter()) is live.LiveReporter
    assert type(notebook.reporter(quiet=True)) is report.Reporter


def test_final_line_of_a_model_and_of_an_ensemble():
    h = synthetic_history(steps=60, eval_every=10)
    assert notebook.final_line(h) == f"final test accuracy {h['test_accuracy'][-1]:.4f} after 60 steps"
    e = synthetic_history(steps=60, eval_every=10, members=3)
    e["test_loss"][2, -1], e["test_accuracy"][2, -1] = np.inf, np.nan  # member 2 diverged
    ok = e["test_accuracy"][:2, -1]
    assert notebook.final_line(e) == (f"final test accuracy {ok.mean():.4f} (mean of 2 of 3; members "
                                      f"{ok.min():.4f}-{ok.max():.4f}) after 60 steps")


def test_train_passes_the_reporter_and_prints_the_final_line(fake_run, capsys):
    config = Config(steps=100, eval_every=10, log_every=10, seeds=(0, 1))
    result = notebook.train(config, dataset="arrays", quiet=True)
    (got, kwargs), = fake_run
    assert got is config and kwargs["dataset"] == "arrays" and type(kwargs["reporter"]) is report.Reporter
    assert capsys.readouterr().out == notebook.final_line(result.history) + "\n"


@pytest.mark.parametrize("overfits", [True, False])
def test_conclusions_read_the_history(overfits):
    h = synthetic_history(steps=100, eval_every=10)
    if overfits:  # the test loss is lowest at step 50, then climbs while the training loss falls
        h["test_loss"] = (0.3 + (h["test_step"] / 100 - 0.5) ** 2).astype(np.float32)
    text = notebook.conclusions(h)
    assert f"final test accuracy **{h['test_accuracy'][-1]:.4f}**" in text
    low = int(np.argmin(h["test_loss"]))
    assert f"its lowest, **{h['test_loss'][low]:.3f}**, came at step {h['test_step'][low]}" in text
    late = h["train_accuracy"][90:].mean()
    gap = late - h["test_accuracy"][-1]
    assert f"mean accuracy **{late:.4f}**, so the train/test gap is **{gap:.4f}**" in text
    assert ("the network overfits" in text) == overfits
    assert "mean of 3 members" in notebook.conclusions(synthetic_history(steps=100, eval_every=10, members=3))


def test_ladder_trains_each_rung_on_the_base_data_and_schedule(fake_run, capsys):
    base = Config(dataset="kmnist", steps=200, eval_every=20, log_every=40, data_dir="/d")
    histories = notebook.ladder(base, ("softmax", "relu"), dataset="arrays", seeds=(3, 4), steps=100)
    assert list(histories) == ["softmax", "relu"]
    for (config, kwargs), name in zip(fake_run, histories):
        assert config.preset == name and config.learning_rate == PRESETS[name]["learning_rate"]
        assert (config.dataset, config.data_dir) == ("kmnist", "/d")
        assert (config.eval_every, config.log_every) == (20, 40)
        assert config.seeds == (3, 4) and config.steps == 100
        assert kwargs == {"dataset": "arrays", "quiet": True}
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{name}: {notebook.final_line(h)}" for name, h in histories.items()]


def test_ladder_table_counts_members_and_leaves_out_diverged_ones():
    a = synthetic_history(steps=60, eval_every=10, members=3)
    a["test_loss"][0, -1], a["test_accuracy"][0, -1] = np.inf, np.nan
    b = synthetic_history(steps=60, eval_every=10, members=2, seed=1)
    rows = notebook.ladder_table({"softmax": a, "mine": b}).splitlines()
    ok = a["test_accuracy"][1:, -1].astype(np.float64)
    assert rows[2] == (f"| softmax | 3 (1 diverged) | {ok.mean():.4f} ± {ok.std(ddof=1):.4f} | "
                       f"{ok.min():.4f} – {ok.max():.4f} | ~0.92 (max 0.9268) |")
    assert rows[3].startswith("| mine | 2 | ") and rows[3].endswith("| – |")


def test_describe_model_lists_each_parameter_and_the_count():
    from flax import nnx

    text = notebook.describe_model(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    assert text.splitlines() == ["bias: (4,)", "kernel: (3, 4)", "16 parameters"]


def test_example_figure_names_the_class():
    ds = synthetic(n_train=5, n_test=3)
    fig = notebook.example_figure(ds._replace(class_names=tuple(f"c{i}" for i in range(10))), 2)
    label = int(ds.train_labels[2])
    assert fig.axes[0].get_title() == f"label {label}: c{label}"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), ds.train_images[2])


@pytest.mark.slow
def test_one_step_on_the_mean_loss_equals_one_on_the_summed_loss():
    assert notebook.loss_convention(Config(), synthetic(n_train=200, n_test=10)) < 1e-6


# --- the notebook ---------------------------------------------------------------------------

def read_notebook():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def text_of(cell) -> str:
    return "".join(o.text if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell.get("outputs", []))


def cell_calling(nb, name: str):
    return next(c for c in nb.cells if c.cell_type == "code" and name in c.source)


def test_committed_notebook_holds_a_full_run():
    """The copy in docs/ renders on code hosts: every code cell ran, in order, without errors,
    and its outputs are the run its text says it holds (the seed's schedule; rungs × seeds × steps)."""
    nb = read_notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "parameters" in code[0].metadata.tags and "steps = 10_000" in code[0].source
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) >= 5
    final = re.fullmatch(r"final test accuracy (0\.\d{4})\n", text_of(code[-1]))
    assert final and 0.8 < float(final.group(1)) < 1
    text = re.sub(r"\s+", " ", " ".join(c.source for c in nb.cells if c.cell_type == "markdown"))
    steps = re.search(r"Fashion-MNIST.* with the seed's full schedule \(([\d,]+) steps\)", text)
    ladder = re.search(r"every rung with (\d+) seeds \([\d, ]+\) for the full ([\d,]+) steps", text)
    assert steps and ladder, "the notebook's sentences on what it ran changed shape"
    steps, seeds, ladder_steps = (int(g.replace(",", "")) for g in (*steps.groups(), *ladder.groups()))
    assert text_of(cell_calling(nb, "notebook.load(")).startswith("fashion_mnist ")
    assert re.search(rf"^final test accuracy {final.group(1)} after {steps} steps$",
                     text_of(cell_calling(nb, "notebook.train(")), re.M)
    out = text_of(cell_calling(nb, "notebook.ladder("))
    assert out.startswith(f"{len(notebook.LADDER)} rungs x {seeds} seeds, {ladder_steps:,} steps each, on fashion")
    lines = re.findall(rf"^([\w-]+): final test accuracy 0\.\d{{4}} \(mean of {seeds} of {seeds}; .*\) "
                       rf"after {ladder_steps} steps$", out, re.M)
    assert lines == list(notebook.LADDER), out
    table = next(o.data["text/markdown"] for o in cell_calling(nb, "notebook.ladder_table(").outputs
                 if "text/markdown" in o.get("data", {}))
    assert re.findall(r"^\| ([\w-]+) \| (\d+) \|", table, re.M) == [(n, str(seeds)) for n in notebook.LADDER]


def write_learnable_idx(folder, n_train=1200, n_test=300, seed=0):
    """Four IDX files of a task a small MLP learns in a few hundred steps: a bright band at its
    class's rows under noise, 15% of the labels redrawn (no model scores above ~0.87 + noise)."""
    from jaxmlp import idx

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


@pytest.mark.slow
def test_notebook_runs_short_on_learnable_data(tmp_path, monkeypatch):
    """Executed by nbclient in a kernel of this interpreter, its parameters set in a cell added
    after the "parameters" cell (papermill-style)."""
    import nbclient
    import nbformat

    spec = tmp_path / "jupyter" / "kernels" / "python3"  # this Python first, not a user's kernel
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxmlp tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    params = dict(dataset="mnist", manual_dir=write_learnable_idx(tmp_path / "idx"),
                  data_dir=str(tmp_path / "data"), steps=300, eval_every=50, log_every=100,
                  ladder_seeds=(0, 1), ladder_steps=100, ladder_presets=("softmax", "relu-lrdecay-dropout"))
    nb = copy.deepcopy(read_notebook())
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on an error
    final = re.fullmatch(r"final test accuracy (\d\.\d{4})\n", text_of(nb.cells[-1]))
    assert final and 0.6 < float(final.group(1)) < 0.97  # chance is 0.1; label noise caps it near 0.87
    assert "largest parameter difference" in text_of(cell_calling(nb, "notebook.loss_convention("))
    train = cell_calling(nb, "notebook.train(")
    assert "final test accuracy" in text_of(train)
    assert sum("image/png" in o.get("data", {}) for o in train.outputs) == 1  # one chart, redrawn in place
    assert text_of(cell_calling(nb, "notebook.ladder(")).count("final test accuracy") == 2  # a line per rung
