"""The live chart: one figure redrawn in place in Jupyter at every reporting point.

``LiveReporter`` is a ``report.Reporter``: the host loop calls it once per chunk
with values it has already fetched, so drawing never adds a device sync.
``jaxmlp.notebook.reporter()`` picks it inside a Jupyter kernel.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxmlp import history as hist
from jaxmlp import plot, report


# --- the live chart ------------------------------------------------------------------------------

EXTRA_KEYS = ("train_loss", "train_accuracy", "weight_percentiles", "bias_percentiles")
"""Optional ``chunk`` values ``LiveReporter`` draws when given: the chunk's mean train loss and
accuracy ((K,)) and the parameter percentiles at the chunk's end ((K, L, P), levels
``history.PERCENTILES``), K = 1 for a single model."""


class LiveReporter(report.Reporter):
    """Redraws ONE figure in place at reporting points, like the talk's live dashboard:
    accuracy and cross-entropy (test from every chunk; train when the run reports it),
    and per-layer weight and bias percentile bands.

    Drawing is throttled, since a frame costs ~0.1-0.2 s of CPU: a frame is drawn at
    most every ``min_interval`` seconds, and only while all frames so far (this one
    included, estimated as the last one's cost) took at most ``max_share`` of the time
    since ``start``. ``close`` always draws the last chunk, unless ``draw_at_close`` is
    False because ``finish`` will draw the last frame from the run's history (what
    ``train`` does). ``display`` is called with the PNG bytes of each frame (default: an
    IPython display handle, created at the first frame and updated after).
    """

    FIRST_FRAME_ESTIMATE = 0.15  # seconds: the first frame waits until the budget covers it

    def __init__(self, *, quiet: bool = False, stream=None, min_interval: float = 0.5,
                 max_share: float = 0.02, display: Callable[[bytes], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__(quiet=quiet, stream=stream)
        self.min_interval, self.max_share = min_interval, max_share
        self.draw_at_close = True
        self._display = display or _DisplayHandle()
        self._clock = clock
        self.frames = 0  # frames drawn so far
        self.draw_seconds = 0.0  # time spent drawing them
        self._pending = False

    def start(self, config, *, start_step: int = 0, examples_per_epoch: int = 60_000) -> None:
        super().start(config, start_step=start_step, examples_per_epoch=examples_per_epoch)
        self.total_steps = config.steps
        self._rows: list[dict] = []  # one per chunk: step, test metrics, alive, extras
        self._started = self._clock()
        self._last_end = -math.inf  # when the last frame was done
        self._last_cost = self.FIRST_FRAME_ESTIMATE
        self._fig = None

    def chunk(self, step: int, test_accuracy: np.ndarray, test_loss: np.ndarray,
              alive: np.ndarray, **extra) -> None:
        """As ``Reporter.chunk``; ``extra`` may hold any of ``EXTRA_KEYS`` (host arrays)."""
        super().chunk(step, test_accuracy, test_loss, alive)
        self._rows.append({"step": step, "test_accuracy": _per_member(test_accuracy, 0),
                           "test_loss": _per_member(test_loss, 0), "alive": np.atleast_1d(alive),
                           **{k: _per_member(v, 0 if k.startswith("train") else 2)
                              for k, v in extra.items() if k in EXTRA_KEYS}})
        self._pending = True
        now = self._clock()
        if (now - self._last_end >= self.min_interval
                and self.draw_seconds + self._last_cost <= self.max_share * (now - self._started)):
            self._draw()

    def flush(self) -> None:
        """Draw the last chunk if it has not been drawn yet."""
        if self._pending:
            self._draw()

    def close(self) -> None:
        if self.draw_at_close:
            self.flush()
        super().close()

    def finish(self, history: dict) -> None:
        """Draw the last frame from the run's whole ``history`` (step 0, the mean train
        metrics of every chunk, the percentiles at every evaluation), whatever the chunks
        reported: the same curves a run that reports every ``EXTRA_KEYS`` draws live."""
        steps, acc = hist.series(history, "test", "accuracy")
        _, loss = hist.series(history, "test", "loss")
        done = steps <= hist.completed_steps(history)
        arrays = {"test_accuracy": acc[:, done], "test_loss": loss[:, done]}
        for key in ("weight_percentiles", "bias_percentiles"):
            if key in history:
                arrays[key] = hist.by_member(history, key)[:, done].astype(np.float64)
        ends = steps[done]
        for metric in ("loss", "accuracy"):  # each chunk's mean, at its end (none at step 0)
            t, v = hist.series(history, "train", metric)
            means = np.full((v.shape[0], ends.size), np.nan)
            for i, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
                inside = (t > a) & (t <= b)
                if inside.any():
                    means[:, i] = hist.nan_reduce(np.nanmean, v[:, inside], axis=1)
            arrays[f"train_{metric}"] = means
        self._rows = [{"step": int(s), "alive": np.isfinite(arrays["test_loss"][:, i]),
                       **{k: v[:, i] for k, v in arrays.items()}} for i, s in enumerate(ends)]
        self._draw()

    # Drawing ------------------------------------------------------------------------------

    def _draw(self) -> None:
        t0 = self._clock()
        self._display(plot.png_bytes(self.figure()))
        self._last_end = self._clock()
        self._last_cost = self._last_end - t0
        self.frames += 1
        self.draw_seconds += self._last_cost
        self._pending = False

    def figure(self) -> Figure:
        """The current frame: accuracy, cross-entropy, weight and bias percentiles.

        One figure is kept and only its data artists are replaced at each frame: the
        axes, ticks and titles are reused. Text is most of a frame's cost, so there are
        two legends (the bottom-right panel's colours match its neighbour's), step labels
        only on the bottom row, and titles at a fixed height (no layout pass per frame).
        """
        if self._fig is None:
            self._fig = Figure(figsize=(10, 6.4), dpi=80)
            # Fixed margins: a constrained layout would cost as much as the drawing itself.
            self._fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.08, hspace=0.25,
                                      wspace=0.18)
            titles = ("accuracy", "cross-entropy per image", "weights: median and 10–90% per layer",
                      "biases: median and 10–90% per layer")
            for ax, title in zip(self._fig.subplots(2, 2, sharex=True).flat, titles):
                ax.set_xlim(0, self.total_steps)
                ax.xaxis.set_major_locator(MaxNLocator(5))  # fewer tick labels: cheaper frames
                ax.yaxis.set_major_locator(MaxNLocator(5))
                ax.grid(True, alpha=0.3)
                ax.tick_params(labelsize=8)
                ax.set_title(title, fontsize=10, y=1.0)
            for ax in self._fig.axes[2:]:
                ax.set_xlabel("training step", fontsize=9)
        ax_acc, ax_loss, ax_w, ax_b = self._fig.axes
        for ax in self._fig.axes:
            for artist in [*ax.lines, *ax.collections, *ax.texts]:
                artist.remove()
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        rows = self._rows
        steps = np.asarray([r["step"] for r in rows])
        for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            self._draw_metric(ax, steps, rows, metric)
        _draw_layers(ax_w, steps, _stack(rows, "weight_percentiles"), legend=True)
        _draw_layers(ax_b, steps, _stack(rows, "bias_percentiles"), legend=False)
        self._fig.suptitle(self._title(steps, rows), fontsize=11)
        return self._fig

    def _draw_metric(self, ax, steps: np.ndarray, rows: list[dict], metric: str) -> None:
        test, train = _stack(rows, f"test_{metric}"), _stack(rows, f"train_{metric}")
        if train is not None:
            ax.plot(steps, hist.nan_reduce(np.nanmean, train), color="C1", linewidth=1.2,
                    alpha=0.8, label="train (mean of each chunk)")
        if test is not None and steps.size:
            if test.shape[0] > 1:
                ax.fill_between(steps, hist.nan_reduce(np.nanmin, test),
                                hist.nan_reduce(np.nanmax, test), color="C0", alpha=0.2,
                                linewidth=0, label=f"test min–max of {test.shape[0]}")
            marker = "o" if steps.size < 3 else None
            ax.plot(steps, hist.nan_reduce(np.nanmean, test), color="C0", linewidth=2,
                    marker=marker, markersize=3,
                    label="test" if test.shape[0] == 1 else f"test mean of {test.shape[0]}")
            late = test[:, steps >= steps[-1] / 2]
            late = late[np.isfinite(late)]
            if late.size and metric == "accuracy":
                ax.set_ylim(max(0.0, min(0.85, math.floor((late.min() - 0.02) * 20) / 20)), 1.005)
            elif late.size:  # the late loss range, as the seed's zoomed panel
                ax.set_ylim(0, max(3 * float(np.median(late)), 1e-3))
            if metric == "accuracy":
                ax.legend(loc="lower right", fontsize=8)

    def _title(self, steps: np.ndarray, rows: list[dict]) -> str:
        if not rows:
            return "waiting for the first evaluation"
        acc = rows[-1]["test_accuracy"]
        alive = rows[-1]["alive"]
        what = (f"test accuracy {acc[0]:.4f}" if acc.size == 1 else
                f"test accuracy, mean of {acc.size}: "
                f"{float(hist.nan_reduce(np.nanmean, np.where(alive, acc, np.nan))):.4f}")
        lost = f" ({int((~alive).sum())} diverged)" if not alive.all() else ""
        return f"step {steps[-1]:,} of {self.total_steps:,}: {what}{lost}"


class _DisplayHandle:
    """One output in the cell, replaced by each new frame (IPython's display_id)."""

    def __init__(self):
        self._handle = None

    def __call__(self, png: bytes) -> None:
        from IPython.display import Image, display

        image = Image(data=png, format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


def _stack(rows: list[dict], key: str) -> np.ndarray | None:
    """``key`` of every row stacked on a time axis after the model axis: (K, N, ...); None if no
    row has it; rows without it (say, chunks from before it was reported) are NaN."""
    have = [r[key] for r in rows if key in r]
    if not have:
        return None
    gap = np.full(have[0].shape, np.nan)
    return np.stack([r.get(key, gap) for r in rows], axis=1)


def _per_member(value, ndim: int) -> np.ndarray:
    """``value`` with a leading model axis: (K, *axes) of ``ndim`` axes per model, K = 1 for one."""
    value = np.asarray(value, np.float64)
    return value.reshape(-1, *value.shape[value.ndim - ndim:]) if ndim else value.reshape(-1)


def _draw_layers(ax, steps: np.ndarray, values: np.ndarray | None, *, legend: bool) -> None:
    """Per layer: the 10–90% band and the median of its values; an ensemble's members averaged."""
    if values is None or not steps.size:
        ax.text(0.5, 0.5, "not reported during the run\n(shown when it ends)", ha="center",
                va="center", transform=ax.transAxes, color="0.5", fontsize=9)
        return
    pct = hist.nan_reduce(np.nanmean, values)  # (N, L, P)
    levels = list(hist.PERCENTILES)
    lo, mid, hi = levels.index(10.0), levels.index(50.0), levels.index(90.0)
    for layer in range(pct.shape[1]):
        color = f"C{layer % 10}"
        ax.fill_between(steps, pct[:, layer, lo], pct[:, layer, hi], color=color, alpha=0.18,
                        linewidth=0)
        ax.plot(steps, pct[:, layer, mid], color=color, linewidth=1.2, label=f"layer {layer + 1}")
    if legend:
        ax.legend(loc="upper left", fontsize=7, ncols=min(pct.shape[1], 5))


