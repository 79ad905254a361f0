"""The live chart: frames from the chunks a run reports, redrawn at most every N seconds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from jaxmlp import live

CONFIG = SimpleNamespace(steps=1000, log_every=100, batch_size=100)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def report(step: int, k: int = 1, layers: int = 3) -> dict:
    acc = np.full(k, 0.5 + step / 4000) + 0.01 * np.arange(k)
    pct = np.sort(np.random.default_rng(step).normal(size=(k, layers, 7)), axis=-1)
    return {"alive": np.ones(k, bool), "test_accuracy": acc, "test_loss": 2 - acc,
            "train_accuracy": acc + 0.02, "train_loss": 1.9 - acc,
            "weight_percentiles": pct, "bias_percentiles": pct / 10}


def reporter(**kwargs):
    frames = []
    rep = live.LiveReporter(quiet=True, display=frames.append, **kwargs)
    return rep, frames


def test_frames_at_most_every_n_seconds_and_the_last_one_at_close():
    clock = Clock()
    rep, frames = reporter(every=5.0, clock=clock)
    rep.start(CONFIG)
    drawn_at = []
    for i in range(1, 11):
        clock.now = float(i)  # a chunk a second
        before = len(frames)
        rep.chunk(100 * i, report(100 * i, layers=0))  # small frames: this tests when they come
        if len(frames) > before:
            drawn_at.append(clock.now)
    assert drawn_at == [1.0, 6.0]
    rep.close()  # the last chunk (step 1000) had not been drawn
    assert len(frames) == rep.frames == 3 and frames[-1].startswith(b"\x89PNG")
    rep.close()  # nothing new: no frame
    assert len(frames) == 3


def test_a_frame_draws_the_reported_values():
    rep, _ = reporter()
    rep.start(CONFIG, member_names=["s0", "s1", "s2"])
    for step in (100, 200, 300):
        rep.chunk(step, report(step, k=3))
    h = rep.history()
    assert h["test_accuracy"].shape == (3, 3) and h["weight_percentiles"].shape == (3, 3, 3, 7)
    fig = rep.figure()
    acc = next(ax for ax in fig.axes if ax.get_title() == "accuracy")
    test = [line for line in acc.lines if line.get_gid() == "test"]
    assert [line.get_label().split(":")[0] for line in test] == ["s0", "s1", "s2"]
    want = [report(step, k=3)["test_accuracy"][1] for step in (100, 200, 300)]
    np.testing.assert_allclose(test[1].get_ydata(), want)
    train = [line for line in acc.lines if line.get_gid() == "train"]
    assert max(line.get_linewidth() for line in train) < min(line.get_linewidth() for line in test)
    assert sum(ax.get_title().startswith("weights") for ax in fig.axes) == 1
    assert "step 300 of 1,000" in fig.get_suptitle()


@pytest.mark.parametrize("layers", [0, None])
def test_a_model_without_layers_draws_no_percentile_panels(layers):
    rep, frames = reporter()
    rep.start(CONFIG)  # one model
    for step in (100, 200):
        r = report(step, layers=layers or 0)
        r["weight_percentiles"] = r["weight_percentiles"][0]  # a single model's may come without the K axis
        if layers is None:  # a reporter that sends no percentiles at all
            r = {k: v for k, v in r.items() if not k.endswith("percentiles")}
        rep.chunk(step, r)
    assert rep.history()["test_loss"].shape == (2,)
    if layers == 0:
        h = rep.history()
        assert h["weight_percentiles"].shape == h["bias_percentiles"].shape == (2, 0, 7)
    fig = rep.figure()
    assert not any("weights" in ax.get_title() or "biases" in ax.get_title() for ax in fig.axes)
    assert len(frames) == 1  # the first chunk's frame


def test_the_default_display_updates_one_output(monkeypatch):
    import IPython.display

    calls = []

    class Handle:
        def display(self, obj):
            calls.append(("display", obj.data))

        def update(self, obj):
            calls.append(("update", obj.data))

    monkeypatch.setattr(IPython.display, "DisplayHandle", Handle)
    rep = live.LiveReporter(quiet=True)
    for run in range(2):
        rep.start(CONFIG)
        for png in (b"\x89PNG1", b"\x89PNG2"):
            rep._show(png)
    # One output per run, updated in place.
    assert calls == [("display", b"\x89PNG1"), ("update", b"\x89PNG2")] * 2
