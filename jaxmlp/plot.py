"""Figures drawn from saved histories: the original's two charts and a dashboard.

A *history* is a dict of numpy arrays (see ``jaxmlp.history``): ``train_step``
(T,), ``train_loss`` and ``train_accuracy`` (T,) per step, ``test_step`` (E,),
``test_loss`` and ``test_accuracy`` (E,) per evaluation, and for the dashboard
``percentiles`` (P,) with ``weight_percentiles`` / ``bias_percentiles`` (E, L, P).
An ensemble of K models has a leading K axis on every array except the step
numbers and ``percentiles``; an optional ``members`` array names the models.
Any T, E >= 1 works (an interrupted run is just shorter), and NaN/inf values
draw as gaps, with the first non-finite step marked.

Every figure has a fixed size in inches and a fixed dpi, so the PNGs have the
pixel sizes in ``FIGURE_SIZES``. Only matplotlib's Agg canvas is used (headless,
no pyplot state), and neither jax nor tensorflow is imported: redrawing from
records is fast. Files are written with ``records.atomic_write_bytes``.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jaxmlp import records

DPI = 100
CURVES_SIZE = (1200, 500)
"""Pixel size (width, height) of ``accuracy.png`` and ``cross_entropy.png``."""
DASHBOARD_SIZE = (1600, 1000)
"""Pixel size (width, height) of every dashboard PNG."""
FIGURE_SIZES = {
    "accuracy.png": CURVES_SIZE,
    "cross_entropy.png": CURVES_SIZE,
    "dashboard.png": DASHBOARD_SIZE,
}
ACCURACY_ZOOM = (0.85, 1.0)
"""The zoomed accuracy panel's range, as in the original."""
MAX_DIGITS = 24
"""Misclassified digits shown on the dashboard (the first ones in test order)."""

# zorder keeps every run's noisy train line beneath every run's test line.
_TRAIN_STYLE = dict(linewidth=0.7, alpha=0.55, zorder=1.5)  # per step: thin, it is noisy
_TEST_STYLE = dict(linewidth=2.2, alpha=1.0, zorder=3)  # per evaluation: thick
_BAND_ALPHA = 0.15
_DIGIT_COLS = 4


# --- reading histories ----------------------------------------------------------


def _nan_reduce(fn, values: np.ndarray, axis: int) -> np.ndarray:
    # nanmean & co. warn on all-NaN columns (a diverged ensemble); a NaN result is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(values, axis=axis)


def _series(history: dict, kind: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps (N,), values (K, N)) of ``{kind}_{metric}``; K = 1 for a single model."""
    values = np.asarray(history[f"{kind}_{metric}"], dtype=np.float64)
    values = values[None] if values.ndim == 1 else values
    n = values.shape[-1]
    steps = history.get(f"{kind}_step")
    if steps is None:  # minimal histories: train steps count from 1, evaluations from 0
        steps = np.arange(1, n + 1) if kind == "train" else np.arange(n)
    steps = np.asarray(steps)
    # A history saved mid-write by an older writer could disagree by one entry; plot the overlap.
    n = min(n, steps.shape[0])
    return steps[:n], values[:, :n]


def _num_members(history: dict) -> int:
    loss = np.asarray(history["train_loss"])
    return loss.shape[0] if loss.ndim == 2 else 1


def _member_labels(history: dict, members: Sequence[str] | None) -> list[str]:
    k = _num_members(history)
    if members is None and "members" in history:
        members = [str(m) for m in np.asarray(history["members"]).reshape(-1)]
    if members is None or len(members) != k:
        return [f"model {i}" for i in range(k)]
    return list(members)


def _first_nonfinite_step(history: dict) -> int | None:
    """The first step whose train or test loss is NaN/inf (any member), or None."""
    first = None
    for kind in ("train", "test"):
        if f"{kind}_loss" not in history:
            continue
        steps, values = _series(history, kind, "loss")
        bad = ~np.isfinite(values).all(axis=0)
        if bad.any():
            s = int(steps[np.argmax(bad)])
            first = s if first is None else min(first, s)
    return first


def _final_and_best(history: dict) -> tuple[tuple[float, int], tuple[float, int]] | None:
    """((final test accuracy, step), (best, step)) of the (member-mean) test curve."""
    steps, acc = _series(history, "test", "accuracy")
    acc = _nan_reduce(np.nanmean, acc, axis=0)
    if acc.size == 0:
        return None
    final = (float(acc[-1]), int(steps[-1]))
    if np.isfinite(acc).any():
        i = int(np.nanargmax(acc))
        return final, (float(acc[i]), int(steps[i]))
    return final, (math.nan, final[1])


# --- limits -----------------------------------------------------------------------


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= x."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    base = 10.0 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * base >= x * (1 - 1e-9):
            return m * base
    return 10 * base


def _late_test_values(histories: Sequence[dict], metric: str) -> np.ndarray:
    """Finite member-mean test values from the second half of each run."""
    late = []
    for h in histories:
        steps, values = _series(h, "test", metric)
        if steps.size == 0:
            continue
        mean = _nan_reduce(np.nanmean, values, axis=0)
        keep = steps >= steps[-1] / 2
        late.append(mean[keep])
    late = np.concatenate(late) if late else np.zeros(0)
    return late[np.isfinite(late)]


def _loss_zoom_top(histories: Sequence[dict]) -> float:
    """Top of the zoomed cross-entropy range: twice the late test loss, rounded up."""
    late = _late_test_values(histories, "loss")
    return max(0.05, _nice_ceil(2 * float(np.median(late)))) if late.size else 1.0


def _accuracy_zoom_bottom(histories: Sequence[dict]) -> float:
    """The dashboard's accuracy floor: 0.85, lower if the late test curve is lower."""
    late = _late_test_values(histories, "accuracy")
    if not late.size:
        return 0.0
    return max(0.0, min(ACCURACY_ZOOM[0], math.floor((late.min() - 0.02) * 20) / 20))


def _finite_max(histories: Sequence[dict], metric: str) -> float:
    top = 0.0
    for h in histories:
        for kind in ("train", "test"):
            _, v = _series(h, kind, metric)
            v = v[np.isfinite(v)]
            if v.size:
                top = max(top, float(v.max()))
    return top


def _max_step(histories: Sequence[dict]) -> int:
    last = 1
    for h in histories:
        for kind in ("train", "test"):
            steps, _ = _series(h, kind, "loss")
            if steps.size:
                last = max(last, int(steps.max()))
    return last


def _set_step_limits(ax, last: int) -> None:
    # A 1% margin keeps the step-0 evaluation and the last step's markers whole.
    ax.set_xlim(-0.01 * last, 1.01 * last)


# --- drawing ----------------------------------------------------------------------


def _runs(histories, labels, members):
    """Normalise arguments to a list of (label, history, color, member labels, member colors)."""
    if isinstance(histories, dict):
        histories = [histories]
    histories = list(histories)
    if labels is None:
        labels = [None] if len(histories) == 1 else [f"run {i}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories")
    runs = []
    for i, (label, h) in enumerate(zip(labels, histories)):
        names = _member_labels(h, members if len(histories) == 1 else None)
        if len(histories) == 1 and len(names) > 1:
            # One ensemble: members get their own colours, the mean is black.
            runs.append((label, h, "black", names, [f"C{j % 10}" for j in range(len(names))]))
        else:
            runs.append((label, h, f"C{i % 10}", names, [f"C{i % 10}"] * len(names)))
    return runs


def _draw_metric(ax, runs, metric: str) -> None:
    """Train (thin) and test (thick) curves of every run; ensembles add members and a band."""
    # Overlaid train lines of several runs merge into one haze; fainter, the test lines stay readable.
    train_style = dict(_TRAIN_STYLE, alpha=max(0.2, _TRAIN_STYLE["alpha"] / len(runs)))
    for _, h, color, _, member_colors in runs:
        for kind, style in (("train", train_style), ("test", _TEST_STYLE)):
            steps, values = _series(h, kind, metric)
            # A single point draws no line; mark short series so they stay visible.
            marker = dict(marker="o", markersize=3) if steps.size <= (1 if kind == "train" else 25) else {}
            if values.shape[0] == 1:
                ax.plot(steps, values[0], color=color, **style, **marker)
                continue
            mean = _nan_reduce(np.nanmean, values, axis=0)
            if kind == "train":
                # Per-step members and their band would only add a haze of minibatch
                # noise: the train curve of an ensemble is its (thin) mean.
                ax.plot(steps, mean, color=color, **style, **marker)
                continue
            for k in range(values.shape[0]):
                ax.plot(steps, values[k], color=member_colors[k], linewidth=0.8, alpha=0.6, zorder=2.5)
            lo = _nan_reduce(np.nanmin, values, axis=0)
            hi = _nan_reduce(np.nanmax, values, axis=0)
            ax.fill_between(steps, lo, hi, color=color, alpha=_BAND_ALPHA, linewidth=0, zorder=2)
            ax.plot(steps, mean, color=color, **style, **marker)
        bad = _first_nonfinite_step(h)
        if bad is not None:
            ax.axvline(bad, color="red", linestyle="--", linewidth=1.2)


def _legend_handles(runs, metric: str) -> list:
    handles = []
    for label, h, color, names, member_colors in runs:
        _, v = _series(h, "test", metric)
        final = ""
        if v.shape[-1]:
            last = _nan_reduce(np.nanmean, v, axis=0)[-1]
            final = f"final test {last:.4f}" if metric == "accuracy" else f"final test {last:.3f}"
        if len(names) > 1:
            if len(runs) == 1 and len(names) <= 10:
                handles += [Line2D([], [], color=c, linewidth=1, label=f"test, {n}")
                            for n, c in zip(names, member_colors)]
            handles.append(Line2D([], [], color=color, linewidth=2.2,
                                  label=f"{label + ': ' if label else ''}mean of {len(names)} ({final})"))
            handles.append(Patch(color=color, alpha=_BAND_ALPHA * 2, label=f"test min–max of {len(names)}"))
        else:
            handles.append(Line2D([], [], color=color, linewidth=2.2,
                                  label=f"{label}: {final}" if label else final))
        bad = _first_nonfinite_step(h)
        if bad is not None:
            handles.append(Line2D([], [], color="red", linestyle="--",
                                  label=f"{label + ': ' if label else ''}first non-finite loss, step {bad}"))
    handles.append(Line2D([], [], color="grey", **_TRAIN_STYLE, label="train (per step)"))
    handles.append(Line2D([], [], color="grey", **_TEST_STYLE, label="test (per evaluation)"))
    return handles


def _curves_figure(histories, labels, members, metric: str) -> Figure:
    runs = _runs(histories, labels, members)
    hs = [r[1] for r in runs]
    w, hgt = CURVES_SIZE
    fig = Figure(figsize=(w / DPI, hgt / DPI), dpi=DPI, layout="constrained")
    full, zoom = fig.subplots(1, 2)
    for ax in (full, zoom):
        _draw_metric(ax, runs, metric)
        _set_step_limits(ax, _max_step(hs))
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    if metric == "accuracy":
        fig.suptitle("Accuracy")
        full.set_ylim(-0.02, 1.02)
        # A hair above 1.0 so a minibatch accuracy of exactly 1 is not cut in half.
        zoom.set_ylim(ACCURACY_ZOOM[0], ACCURACY_ZOOM[1] + 0.005)
        full.set_title("full range")
        zoom.set_title(f"zoom {ACCURACY_ZOOM[0]:.2f}–{ACCURACY_ZOOM[1]:.1f}")
        full.set_ylabel("accuracy")
        full.legend(handles=_legend_handles(runs, metric), loc="lower right", fontsize=8)
    else:
        fig.suptitle("Cross-entropy per image")
        full.set_ylim(0, max(_finite_max(hs, "loss"), 1e-3) * 1.05)
        top = _loss_zoom_top(hs)
        zoom.set_ylim(0, top)
        full.set_title("full range")
        zoom.set_title(f"zoom 0–{top:g} (2 × median late test loss)")
        full.set_ylabel("cross-entropy per image")
        full.legend(handles=_legend_handles(runs, metric), loc="upper right", fontsize=8)
    return fig


def accuracy_figure(histories, labels: Sequence[str] | None = None,
                    members: Sequence[str] | None = None) -> Figure:
    """The original's accuracy chart: full range and zoomed to 0.85–1.0.

    ``histories`` is one history or a list (overlaid, one colour each, with
    ``labels`` in the legend). ``members`` names the models of a single ensemble.
    """
    return _curves_figure(histories, labels, members, "accuracy")


def cross_entropy_figure(histories, labels: Sequence[str] | None = None,
                         members: Sequence[str] | None = None) -> Figure:
    """The original's cross-entropy chart (per image): full range and zoomed.

    The zoom spans 0 to twice the median test loss over the second half of
    training, rounded up to 1, 2, 2.5 or 5 x 10^k (about 0–0.2 for the default run).
    """
    return _curves_figure(histories, labels, members, "loss")


def _band_alpha(i: int) -> float:
    return 0.18 + 0.12 * i


def _draw_percentiles(ax, steps: np.ndarray, values: np.ndarray, levels: np.ndarray, color: str) -> None:
    """Nested bands between symmetric percentile levels, darker inwards; the median as a line."""
    order = np.argsort(levels)
    levels, values = levels[order], values[:, order]
    p = len(levels)
    for i in range(p // 2):
        ax.fill_between(steps, values[:, i], values[:, p - 1 - i], color=color,
                        alpha=_band_alpha(i), linewidth=0)
    if p % 2:
        ax.plot(steps, values[:, p // 2], color=color, linewidth=1.2)
    if steps.size == 1:  # one evaluation: bands have no width, show the points
        ax.plot(np.repeat(steps, p), values[0], "o", color=color, markersize=3)


def _percentile_legend(levels: np.ndarray, color: str) -> list:
    levels = np.sort(levels)
    p = len(levels)
    # Band i lies under bands 0..i, so its visible opacity is the layers' composite.
    opacity = [1 - math.prod(1 - _band_alpha(j) for j in range(i + 1)) for i in range(p // 2)]
    handles = [Patch(color=color, alpha=opacity[i], label=f"{levels[i]:g}–{levels[p - 1 - i]:g}%")
               for i in range(p // 2)]
    if p % 2:
        handles.append(Line2D([], [], color=color, linewidth=1.2, label=f"{levels[p // 2]:g}% (median)"
                              if levels[p // 2] == 50 else f"{levels[p // 2]:g}%"))
    return handles


def _draw_digits(sub, misclassified: dict) -> None:
    images = np.asarray(misclassified["image"])
    predicted = np.asarray(misclassified["predicted"]).reshape(-1)
    label = np.asarray(misclassified["label"]).reshape(-1)
    n = min(len(images), MAX_DIGITS)
    rows = math.ceil(MAX_DIGITS / _DIGIT_COLS)  # fixed grid: digits keep one size whatever n is
    axes = sub.subplots(rows, _DIGIT_COLS, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i].reshape(28, 28), cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"pred {int(predicted[i])} / true {int(label[i])}", fontsize=9, color="firebrick")
    sub.suptitle(f"misclassified test digits ({n} of {len(images)})")


def dashboard_figure(history: dict, misclassified: dict | None = None, label: str | None = None,
                     members: Sequence[str] | None = None) -> Figure:
    """One run at a glance, after the talk's live charts.

    Top left: test and train accuracy and cross-entropy, zoomed to late training.
    Below: percentile bands of each dense layer's weights (one row) and biases
    (the other) at every evaluation; for an ensemble, the members' mean. Right:
    the first ``MAX_DIGITS`` misclassified test digits, "pred X / true Y";
    the curves take the whole width when there are none to show.
    """
    runs = _runs(history, [label], members)
    w, hgt = DASHBOARD_SIZE
    fig = Figure(figsize=(w / DPI, hgt / DPI), dpi=DPI, layout="constrained")
    n_wrong = 0 if misclassified is None else len(misclassified["image"])
    left = fig
    if n_wrong:
        left, right = fig.subfigures(1, 2, width_ratios=[2.5, 1])
        _draw_digits(right, misclassified)
    has_pct = "weight_percentiles" in history and "bias_percentiles" in history and "percentiles" in history
    top = left
    if has_pct:
        top, bottom = left.subfigures(2, 1, height_ratios=[1, 1.35])

    ax_acc, ax_loss = top.subplots(1, 2)
    last = _max_step([history])
    for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        _draw_metric(ax, runs, metric)
        _set_step_limits(ax, last)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    ax_acc.set_ylim(_accuracy_zoom_bottom([history]), 1.005)
    ax_acc.set_title("accuracy")
    ax_acc.legend(handles=_legend_handles(runs, "accuracy"), loc="lower right", fontsize=8)
    ax_loss.set_ylim(0, _loss_zoom_top([history]))
    ax_loss.set_title("cross-entropy per image")

    if has_pct:
        levels = np.asarray(history["percentiles"], dtype=np.float64)
        steps = np.asarray(history["test_step"])
        k = _num_members(history)
        rows = []
        for key in ("weight_percentiles", "bias_percentiles"):
            v = np.asarray(history[key], dtype=np.float64)
            rows.append(_nan_reduce(np.nanmean, v, axis=0) if k > 1 else v)  # (E, L, P)
        n = min(steps.size, rows[0].shape[0], rows[1].shape[0])
        n_layers = rows[0].shape[1]
        axes = bottom.subplots(2, n_layers, sharex=True, squeeze=False)
        for r, (name, color, v) in enumerate(zip(("weights", "biases"), ("C0", "C2"), rows)):
            for layer in range(n_layers):
                ax = axes[r, layer]
                _draw_percentiles(ax, steps[:n], v[:n, layer], levels, color)
                ax.set_title(f"layer {layer + 1} {name}", fontsize=10)
                ax.tick_params(labelsize=8)
                ax.grid(True, alpha=0.3)
                if r == 1:
                    ax.set_xlabel("step", fontsize=9)
            axes[r, 0].set_ylabel(name)
        _set_step_limits(axes[0, 0], last)
        mean_note = f", mean over {k} members" if k > 1 else ""
        bottom.suptitle(f"parameter percentiles per layer at each evaluation{mean_note}", fontsize=11)
        handles = _percentile_legend(levels, "0.35")  # one grey key serves both colours
        bottom.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)

    title = label or "run"
    fb = _final_and_best(history)
    if fb is not None:
        (acc, step), (best, best_step) = fb
        title += f" — test accuracy {acc:.4f} at step {step} (best {best:.4f} at step {best_step})"
    if _num_members(history) > 1:
        title += f" — ensemble of {_num_members(history)}"
    if misclassified is not None and not n_wrong:
        title += " — no misclassified test digits"
    fig.suptitle(title, fontsize=13)
    return fig


# --- files --------------------------------------------------------------------


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` with the Agg canvas; the size is the figure's, untrimmed.

    ``print_png`` draws once, with the layout done inside that draw; ``savefig``
    would draw twice for the same bytes (a layout pass first), a third slower.
    The figure's own dpi is used, so inches x ``DPI`` gives the pixel size.
    """
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    return records.atomic_write_bytes(path, png_bytes(fig))


def plot_history(history: dict, out_dir: str | os.PathLike, *, misclassified: dict | None = None,
                 label: str | None = None, members: Sequence[str] | None = None) -> list[Path]:
    """Write ``accuracy.png``, ``cross_entropy.png`` and ``dashboard.png`` of one run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [label] if label else None
    return [
        save_png(accuracy_figure(history, labels, members), out / "accuracy.png"),
        save_png(cross_entropy_figure(history, labels, members), out / "cross_entropy.png"),
        save_png(dashboard_figure(history, misclassified, label, members), out / "dashboard.png"),
    ]


def run_labels(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct names for run directories: the last path parts that tell them apart."""
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.fspath(d) for d in run_dirs]  # the same directory given twice


def _file_safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Redraw the figures of saved runs; returns the paths written.

    One run: its three figures, by default into its own directory. Several runs
    (``out_dir`` required): ``accuracy.png`` and ``cross_entropy.png`` overlay
    them with a legend of their directory names, and each gets its own
    ``dashboard-<name>.png``. Raises ``records.RecordError`` (one line) for a
    directory without ``history.npz`` before drawing anything.
    """
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("no run directories given")
    if out_dir is None:
        if len(run_dirs) > 1:
            raise ValueError("an output directory is required when plotting several runs")
        out_dir = run_dirs[0]
    loaded = [records.load_run(d) for d in run_dirs]  # all errors before any drawing
    out = records.check_writable(out_dir, min_free_bytes=16 * 2**20)
    labels = run_labels(run_dirs)
    histories = [h for _, h, _ in loaded]
    if len(run_dirs) == 1:
        _, history, wrong = loaded[0]
        return plot_history(history, out, misclassified=wrong, label=labels[0])
    written = [
        save_png(accuracy_figure(histories, labels), out / "accuracy.png"),
        save_png(cross_entropy_figure(histories, labels), out / "cross_entropy.png"),
    ]
    used: set[str] = set()
    for label, (_, history, wrong) in zip(labels, loaded):
        name = _file_safe(label)
        while name in used:  # two labels that differ only in unsafe characters
            name += "_"
        used.add(name)
        written.append(save_png(dashboard_figure(history, wrong, label), out / f"dashboard-{name}.png"))
    return written


def expected_size(path: str | os.PathLike) -> tuple[int, int]:
    """The pixel size (width, height) ``plot`` gives the file named like ``path``."""
    name = Path(path).name
    return DASHBOARD_SIZE if name.startswith("dashboard") else FIGURE_SIZES[name]


__all__ = [
    "ACCURACY_ZOOM", "CURVES_SIZE", "DASHBOARD_SIZE", "DPI", "FIGURE_SIZES", "MAX_DIGITS",
    "accuracy_figure", "cross_entropy_figure", "dashboard_figure", "expected_size", "plot_history",
    "plot_runs", "png_bytes", "run_labels", "save_png",
]
