"""Figures from histories: the 2017 accuracy and cross-entropy charts, and a dashboard.

Each chart shows the full range and a zoomed panel, the training minibatch curve (thin,
per step) under the test curve (thick, per evaluation). Histories are read through
``jaxmlp.history`` only, so redrawing saved runs imports no JAX. Figures are plain
``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxmlp import history as hist
from jaxmlp import records

DPI = 150
FILES = ("accuracy.png", "cross_entropy.png", "dashboard.png")
"""What ``plot_history`` writes, in its order."""
ACCURACY_ZOOM = (0.85, 1.0)  # the original's zoomed accuracy range
LOSS_LABEL = "cross-entropy (loss)"
MAX_MEMBER_LINES = 10  # a larger ensemble draws as its mean and min-max band
MAX_IMAGES = 24  # misclassified examples shown on the dashboard
TRAIN = dict(linewidth=0.6, alpha=0.5, zorder=2)  # per step: thin, it is noisy
TEST = dict(linewidth=2.2, zorder=3)  # per evaluation: thick
_PARAMS = {"weight_percentiles": ("weights", "C0"), "bias_percentiles": ("biases", "C2")}
_PAIR = dict(left=0.06, right=0.98, wspace=0.15)  # two panels side by side; fixed: no layout pass


def _finite(v: np.ndarray) -> np.ndarray:
    # A diverged model's inf draws as a gap, like the NaN of steps not yet run.
    return np.where(np.isfinite(v), v, np.nan)


# --- curves ---------------------------------------------------------------------------

def _lines(histories, labels, members) -> list[tuple]:
    """What to draw: (label, colour, history, member index, or None for the members' mean).

    One ensemble of at most ``MAX_MEMBER_LINES`` gets a line per member; anything else
    (one model, several runs, a large ensemble) a line per history."""
    histories = [histories] if isinstance(histories, dict) else list(histories)
    if labels is None:
        labels = [None] if len(histories) == 1 else [f"run {i}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories")
    h = histories[0]
    if len(histories) == 1 and 1 < hist.num_members(h) <= MAX_MEMBER_LINES:
        names = list(members) if members is not None else hist.member_names(h)
        return [(name, f"C{k % 10}", h, k) for k, name in enumerate(names)]
    return [(label, f"C{i % 10}", h, None) for i, (label, h) in enumerate(zip(labels, histories))]


def _draw_curves(ax, lines: list[tuple], metric: str) -> None:
    """Train (thin) and test (thick) curves of each line; a mean gets its members' band."""
    train = dict(TRAIN, alpha=max(0.15, TRAIN["alpha"] / len(lines)))  # overlaid noise: fainter
    for label, color, h, k in lines:
        finals = np.atleast_1d(hist.summarize(h)[f"final_test_{metric}"]).astype(np.float64)
        name = f"final test {finals[k] if k is not None else hist.nan_reduce(np.nanmean, finals):.4f}"
        name = f"{label}: {name}" if label else name
        if k is None and finals.size > 1:
            name += f" (mean of {finals.size})"
        for kind, style in (("train", train), ("test", TEST)):
            steps, values = hist.series(h, kind, metric)
            values = _finite(values)
            if k is None and values.shape[0] > 1 and kind == "test":
                ax.fill_between(steps, hist.nan_reduce(np.nanmin, values), hist.nan_reduce(np.nanmax, values),
                                color=color, alpha=0.15, linewidth=0)
            y = values[k] if k is not None else hist.nan_reduce(np.nanmean, values)
            ax.plot(steps, y, color=color, gid=kind, marker="o" if steps.size == 1 else None,
                    label=name if kind == "test" else None, **style)
        first = hist.first_nonfinite_steps(h)
        bad = [s for s in (first if k is None else first[k:k + 1]) if s is not None]
        if bad:  # the first non-finite loss of this member, or of any member of the mean
            ax.axvline(min(bad), color="red", linestyle="--", linewidth=1, gid="diverged")
    ax.set_xlabel("training step")
    ax.grid(True, alpha=0.3)


def _legend(ax, loc: str) -> None:
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", label="train (per step)", **TRAIN),
                Line2D([], [], color="grey", label="test (per evaluation)", **TEST)]
    ax.legend(handles=handles, loc=loc, fontsize=7)


def _late_test(histories: Sequence[dict], metric: str) -> np.ndarray:
    """Finite test values of the second half of each history's evaluations run so far."""
    late = []
    for h in histories:
        steps, v = hist.series(h, "test", metric)
        done = hist.completed_steps(h)
        late.append(v[:, (steps <= done) & (steps >= done / 2)].ravel())
    late = np.concatenate(late)
    return late[np.isfinite(late)]


def _loss_zoom_top(histories: Sequence[dict]) -> float | None:
    """Twice the median late test loss (None: nothing to zoom on)."""
    late = _late_test(histories, "loss")
    return 2 * float(np.median(late)) if late.size and np.median(late) > 0 else None


def _accuracy_floor(histories: Sequence[dict]) -> float:
    """0.85 as in the original, lower in steps of 0.05 when the late test accuracy is lower."""
    late = _late_test(histories, "accuracy")
    return max(0.0, min(ACCURACY_ZOOM[0], math.floor((late.min() - 0.02) * 20) / 20)) if late.size else 0.0


def _curves_figure(histories, labels, members, metric: str) -> Figure:
    lines = _lines(histories, labels, members)
    fig = Figure(figsize=(12, 5), dpi=DPI)
    full, zoom = fig.subplots(1, 2, gridspec_kw=dict(_PAIR, bottom=0.11, top=0.86))
    for ax in (full, zoom):
        _draw_curves(ax, lines, metric)
    full.set_title("full range", y=1.0)
    if metric == "accuracy":
        full.set_ylim(-0.02, 1.02)
        zoom.set_ylim(ACCURACY_ZOOM[0], ACCURACY_ZOOM[1] + 0.005)  # a minibatch at 1.0 stays whole
        zoom.set_title(f"zoom {ACCURACY_ZOOM[0]:.2f}–{ACCURACY_ZOOM[1]:.2f}", y=1.0)
    else:
        full.set_ylim(bottom=0)
        zoom.set_ylim(0, _loss_zoom_top([line[2] for line in lines]))
        zoom.set_title("zoom: 0 to twice the median late test loss", y=1.0)
    full.set_ylabel(metric if metric == "accuracy" else LOSS_LABEL)
    _legend(full, "lower right" if metric == "accuracy" else "upper right")
    fig.suptitle("Accuracy" if metric == "accuracy" else LOSS_LABEL.capitalize())
    return fig


def accuracy_figure(histories, labels: Sequence[str] | None = None,
                    members: Sequence[str] | None = None) -> Figure:
    """Accuracy over the full range and zoomed to 0.85–1.0, as in the original.

    ``histories``: one history or a list of them, overlaid (one colour each, named by
    ``labels``). ``members`` names the models of a single ensemble.
    """
    return _curves_figure(histories, labels, members, "accuracy")


def cross_entropy_figure(histories, labels: Sequence[str] | None = None,
                         members: Sequence[str] | None = None) -> Figure:
    """The loss per example over the full range and zoomed to twice its late test value."""
    return _curves_figure(histories, labels, members, "loss")


# --- dashboard ------------------------------------------------------------------------

def _draw_percentiles(sub, history: dict, keys: list[str]) -> None:
    """One panel per kind of parameter: each layer's median and its 10-90 percentile band
    at every evaluation, a colour per layer (as the talk's dashboard); ensembles averaged."""
    levels = list(np.asarray(history.get("percentiles", hist.PERCENTILES)))
    lo, mid, hi = (levels.index(q) for q in (10.0, 50.0, 90.0))
    steps = np.asarray(history["test_step"]).reshape(-1)
    axes = sub.subplots(1, len(keys), squeeze=False, gridspec_kw=dict(_PAIR, bottom=0.1, top=0.86))[0]
    for ax, key in zip(axes, keys):
        v = hist.nan_reduce(np.nanmean, _finite(hist.by_member(history, key).astype(np.float64)))  # (E, L, P)
        s = steps[-v.shape[0]:]
        for layer in range(v.shape[1]):
            color = f"C{layer % 10}"
            ax.fill_between(s, v[:, layer, lo], v[:, layer, hi], color=color, alpha=0.2, linewidth=0)
            ax.plot(s, v[:, layer, mid], color=color, linewidth=1, label=f"layer {layer + 1}")
        ax.set_title(f"{_PARAMS[key][0]}: median and 10-90 percentiles per layer", fontsize=9, y=1.0)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
    mean = f" (mean of {hist.num_members(history)} members)" if hist.is_ensemble(history) else ""
    sub.suptitle(f"parameter distributions at each evaluation{mean}", fontsize=9)


def _mosaic(images: np.ndarray, cols: int, gap: int) -> np.ndarray:
    """(n, H, W[, C]) images tiled into one array, rows of ``cols``, with white space between
    (``gap`` rows under each image for its label)."""
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    white = np.nan if images.dtype.kind == "f" else 255  # NaN: not drawn, the white background
    out = np.full((rows * (h + gap), cols * (w + 1), *images.shape[3:]), white, images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + 1):c * (w + 1) + w] = image
    return out


def _draw_images(sub, misclassified: dict, class_names: Sequence[str] | None) -> None:
    """The first ``MAX_IMAGES`` misclassified examples in one image (one axes draws much
    faster than one each), "predicted (true label)" under each."""
    images = np.asarray(misclassified["image"])
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    predicted, label = (np.asarray(misclassified[k]).reshape(-1) for k in ("predicted", "label"))
    n, cols = min(len(images), MAX_IMAGES), 4
    name = (lambda c: str(class_names[c])) if class_names is not None else str
    ax = sub.subplots(gridspec_kw=dict(left=0.02, right=0.98, bottom=0.02, top=0.92))
    ax.set_axis_off()
    grey = images.ndim == 3
    scale = dict(vmin=0, vmax=255) if grey and images.dtype == np.uint8 else {}
    h, w = images.shape[1:3]
    gap = max(2, round(0.45 * h))
    ax.imshow(_mosaic(images[:n], cols, gap), cmap="gray" if grey else None, interpolation="nearest",
              **scale)
    for i in range(n):
        r, c = divmod(i, cols)
        ax.text(c * (w + 1) + w / 2, r * (h + gap) + h, f"{name(int(predicted[i]))}\n(true {name(int(label[i]))})",
                ha="center", va="top", fontsize=6, color="firebrick", gid="label")
    sub.suptitle(f"misclassified test examples ({n} of {len(images)})", fontsize=10)


def _title(history: dict, title: str | None) -> str:
    s = hist.summarize(history)
    if hist.is_ensemble(history):
        best = np.asarray(s["best_test_accuracy"], np.float64)
        what = (f"mean test accuracy {np.nanmean(s['final_test_accuracy']):.4f} of {best.size} members"
                f" (best member {np.nanmax(best) if np.isfinite(best).any() else math.nan:.4f})")
    else:
        what = (f"test accuracy {s['final_test_accuracy']:.4f} "
                f"(best {s['best_test_accuracy']:.4f} at step {s['best_test_step']:,})")
    return f"{title + ' — ' if title else ''}{what} after {s['steps']:,} steps"


def dashboard_figure(history: dict, misclassified: dict | None = None, *,
                     members: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                     title: str | None = None, size: tuple[float, float] = (16, 10)) -> Figure:
    """One run at a glance: accuracy and loss (zoomed to late training), below them the
    per-layer weight and bias percentiles when the history has any, and on the right the
    first misclassified test examples when given (``class_names`` names their classes)."""
    fig = Figure(figsize=size, dpi=DPI)
    n_wrong = 0 if misclassified is None else len(misclassified["label"])
    left, right = fig.subfigures(1, 2, width_ratios=[2.6, 1]) if n_wrong else (fig, None)
    keys = [k for k in _PARAMS if k in history and np.shape(history[k])[-2] > 0]  # L = 0: no layers
    top, bottom = left.subfigures(2, 1, height_ratios=[1, 1.3]) if keys else (left, None)
    acc, loss = top.subplots(1, 2, gridspec_kw=dict(_PAIR, bottom=0.13, top=0.85))
    lines = _lines(history, None, members)
    for ax, metric in ((acc, "accuracy"), (loss, "loss")):
        _draw_curves(ax, lines, metric)
    acc.set_ylim(_accuracy_floor([history]), ACCURACY_ZOOM[1] + 0.005)
    loss.set_ylim(0, _loss_zoom_top([history]))
    acc.set_title("accuracy", fontsize=10, y=1.0)
    loss.set_title(LOSS_LABEL, fontsize=10, y=1.0)
    _legend(acc, "lower right")
    if bottom is not None:
        _draw_percentiles(bottom, history, keys)
    if right is not None:
        _draw_images(right, misclassified, class_names)
    fig.suptitle(_title(history, title) + (" — no misclassified test examples"
                                           if misclassified is not None and not n_wrong else ""))
    return fig


# --- files ----------------------------------------------------------------------------

def png_bytes(fig: Figure, dpi: float | None = None) -> bytes:
    """``fig`` as PNG bytes (at its own dpi unless ``dpi``)."""
    buf = io.BytesIO()
    # zlib's fastest level: the default took longer than drawing, for files barely smaller.
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def plot_history(history: dict, out_dir: str | os.PathLike, *, misclassified: dict | None = None,
                 members: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 title: str | None = None) -> list[Path]:
    """Write ``FILES`` (accuracy, cross-entropy, dashboard) of one run into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = (accuracy_figure(history, members=members), cross_entropy_figure(history, members=members),
               dashboard_figure(history, misclassified, members=members, class_names=class_names,
                                title=title))
    for fig in figures[:2] if title else ():
        fig.suptitle(f"{fig.get_suptitle()} — {title}")
    paths = [out / name for name in FILES]
    for fig, path in zip(figures, paths):
        records.atomic_write_bytes(path, png_bytes(fig))  # a kill leaves the old file or the new
    return paths
