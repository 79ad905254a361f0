"""Figures drawn from saved histories: the original's two charts and a dashboard.

Histories are read only through ``jaxmlp.history``'s readers: one model or an
ensemble, any T, E >= 1 (an interrupted run is just shorter). NaN/inf values
draw as gaps; the first non-finite step is a red dashed line, and each
diverged member of an ensemble gets an x at its own step.

Every figure has a fixed size in inches and a fixed dpi, so the PNGs have the
pixel sizes in ``FIGURE_SIZES``. Only matplotlib's Agg canvas is used (headless,
no pyplot state), and neither jax nor tensorflow is imported: redrawing from
records is fast. Files are written with ``records.atomic_write_bytes``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jaxmlp import history as hist
from jaxmlp import records
from jaxmlp.runs import FILES, RunFiles

DPI = 100
CURVES_SIZE = (1200, 500)
"""Pixel size (width, height) of ``accuracy.png`` and ``cross_entropy.png``."""
DASHBOARD_SIZE = (1600, 1000)
"""Pixel size (width, height) of every dashboard PNG."""
FIGURE_SIZES = {FILES.accuracy_png: CURVES_SIZE, FILES.cross_entropy_png: CURVES_SIZE,
                FILES.dashboard_png: DASHBOARD_SIZE}
ACCURACY_ZOOM = (0.85, 1.0)
"""The zoomed accuracy panel's range, as in the original."""
MAX_DIGITS = 24
"""Misclassified digits shown on the dashboard (the first ones in test order)."""

# zorder keeps every run's noisy train line beneath every run's test line.
_TRAIN_STYLE = dict(linewidth=0.7, alpha=0.55, zorder=1.5)  # per step: thin, it is noisy
_TEST_STYLE = dict(linewidth=2.2, alpha=1.0, zorder=3)  # per evaluation: thick
_BAND_ALPHA = 0.15
_DIGIT_COLS = 4


def _figure(size: tuple[int, int]) -> Figure:
    # Fixed margins (gridspec_kw below), no layout engine: constrained layout measured every
    # tick label of every axes and took most of the dashboard's drawing time.
    return Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)


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


def _loss_zoom_top(histories: Sequence[dict]) -> float:
    """Top of the zoomed cross-entropy range: twice the late test loss, rounded up."""
    late = np.concatenate([hist.late_test_values(h, "loss") for h in histories])
    return max(0.05, _nice_ceil(2 * float(np.median(late)))) if late.size else 1.0


def _accuracy_zoom_bottom(histories: Sequence[dict]) -> float:
    """The dashboard's accuracy floor: 0.85, lower if the late test curve is lower."""
    late = np.concatenate([hist.late_test_values(h, "accuracy") for h in histories])
    if not late.size:
        return 0.0
    return max(0.0, min(ACCURACY_ZOOM[0], math.floor((late.min() - 0.02) * 20) / 20))


def _set_step_limits(ax, last: int) -> None:
    # A 1% margin keeps the step-0 evaluation and the last step's markers whole.
    ax.set_xlim(-0.01 * last, 1.01 * last)


# --- curves -------------------------------------------------------------------------


def _runs(histories, labels, members):
    """Normalise arguments to a list of (label, history, color, member labels, member colors)."""
    histories = [histories] if isinstance(histories, dict) else list(histories)
    if labels is None:
        labels = [None] if len(histories) == 1 else [f"run {i}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} histories")
    if len(histories) == 1 and hist.num_members(histories[0]) > 1:
        # One ensemble: members get their own colours, the mean is black.
        names = hist.member_names(histories[0])
        names = list(members) if members is not None and len(members) == len(names) else names
        return [(labels[0], histories[0], "black", names, [f"C{j % 10}" for j in range(len(names))])]
    return [(label, h, f"C{i % 10}", hist.member_names(h), [f"C{i % 10}"] * hist.num_members(h))
            for i, (label, h) in enumerate(zip(labels, histories))]


def _mark_divergence(ax, h: dict, member_colors: list[str]) -> None:
    """A red dashed line at the first non-finite step; in an ensemble, an x per diverged member."""
    first = hist.first_nonfinite_step(h)
    if first is None:
        return
    ax.axvline(first, color="red", linestyle="--", linewidth=1.2)
    steps = hist.first_nonfinite_steps(h)
    for step, color in zip(steps if len(steps) > 1 else [], member_colors):
        if step is not None:
            # On the bottom edge (x in steps, y in axes units): visible whatever the zoom.
            ax.plot([step], [0.03], "x", color=color, markersize=9, markeredgewidth=2,
                    transform=ax.get_xaxis_transform(), clip_on=False, zorder=4)


def _draw_metric(ax, runs, metric: str) -> None:
    """Train (thin) and test (thick) curves of every run; ensembles add members and a band."""
    # Overlaid train lines of several runs merge into one haze; fainter, the test lines stay readable.
    train_style = dict(_TRAIN_STYLE, alpha=max(0.2, _TRAIN_STYLE["alpha"] / len(runs)))
    for _, h, color, _, member_colors in runs:
        for kind, style in (("train", train_style), ("test", _TEST_STYLE)):
            steps, values = hist.series(h, kind, metric)
            # A single point draws no line; mark short series so they stay visible.
            marker = dict(marker="o", markersize=3) if steps.size <= (1 if kind == "train" else 25) else {}
            # Per-step members and their band would only add a haze of minibatch noise:
            # the train curve of an ensemble is its (thin) mean.
            if kind == "test" and values.shape[0] > 1:
                for k in range(values.shape[0]):
                    ax.plot(steps, values[k], color=member_colors[k], linewidth=0.8, alpha=0.6, zorder=2.5)
                ax.fill_between(steps, hist.nan_reduce(np.nanmin, values), hist.nan_reduce(np.nanmax, values),
                                color=color, alpha=_BAND_ALPHA, linewidth=0, zorder=2)
            ax.plot(steps, hist.nan_reduce(np.nanmean, values), color=color, **style, **marker)
        _mark_divergence(ax, h, member_colors)


def _final_text(h: dict, metric: str) -> str:
    """"final test X": the last evaluation's value (the members' mean for an ensemble)."""
    return f"final test {hist.mean_final(h, metric):.{4 if metric == 'accuracy' else 3}f}"


def _legend_handles(runs, metric: str) -> list:
    handles = []
    for label, h, color, names, member_colors in runs:
        prefix, final = f"{label}: " if label else "", _final_text(h, metric)
        if len(names) > 1:
            if len(runs) == 1 and len(names) <= 10:
                handles += [Line2D([], [], color=c, linewidth=1, marker="x" if s != "finite" else None,
                                   label=f"test, {n}" + (f" ({s})" if s != "finite" else ""))
                            for n, c, s in zip(names, member_colors, hist.member_status(h))]
            handles.append(Line2D([], [], color=color, linewidth=2.2,
                                  label=f"{prefix}mean of {len(names)} ({final})"))
            handles.append(Patch(color=color, alpha=_BAND_ALPHA * 2, label=f"test min–max of {len(names)}"))
        else:
            handles.append(Line2D([], [], color=color, linewidth=2.2, label=prefix + final))
        bad = hist.first_nonfinite_step(h)
        if bad is not None:
            handles.append(Line2D([], [], color="red", linestyle="--",
                                  label=f"{prefix}first non-finite loss, step {bad}"))
    handles.append(Line2D([], [], color="grey", **_TRAIN_STYLE, label="train (per step)"))
    handles.append(Line2D([], [], color="grey", **_TEST_STYLE, label="test (per evaluation)"))
    return handles


def _draw_panels(axes, runs, metrics: Sequence[str]) -> None:
    """One metric per panel, over the same step range."""
    last = max(hist.last_step(r[1]) for r in runs)
    for ax, metric in zip(axes, metrics):
        _draw_metric(ax, runs, metric)
        _set_step_limits(ax, last)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)


def _curves_figure(histories, labels, members, metric: str) -> Figure:
    runs = _runs(histories, labels, members)
    hs = [r[1] for r in runs]
    fig = _figure(CURVES_SIZE)
    full, zoom = fig.subplots(1, 2, gridspec_kw=dict(left=0.06, right=0.975, bottom=0.11, top=0.86,
                                                     wspace=0.15))
    _draw_panels((full, zoom), runs, (metric, metric))
    if metric == "accuracy":
        title, loc = "Accuracy", "lower right"
        full.set_ylim(-0.02, 1.02)
        # A hair above 1.0 so a minibatch accuracy of exactly 1 is not cut in half.
        zoom.set_ylim(ACCURACY_ZOOM[0], ACCURACY_ZOOM[1] + 0.005)
        zoom.set_title(f"zoom {ACCURACY_ZOOM[0]:.2f}–{ACCURACY_ZOOM[1]:.1f}")
    else:
        title, loc = "Cross-entropy per image", "upper right"
        full.set_ylim(0, max(1e-3, *(hist.finite_max(h, "loss") for h in hs)) * 1.05)
        top = _loss_zoom_top(hs)
        zoom.set_ylim(0, top)
        zoom.set_title(f"zoom 0–{top:g} (2 × median late test loss)")
    fig.suptitle(title)
    full.set_title("full range")
    full.set_ylabel(title.lower())
    full.legend(handles=_legend_handles(runs, metric), loc=loc, fontsize=8)
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


# --- dashboard ------------------------------------------------------------------------


def _band_alpha(i: int) -> float:
    return 0.18 + 0.12 * i


def _draw_percentiles(ax, steps: np.ndarray, values: np.ndarray, levels: np.ndarray, color: str) -> None:
    """Nested bands between the symmetric (ascending) levels, darker inwards; the median as a line."""
    p = len(levels)
    for i in range(p // 2):
        ax.fill_between(steps, values[:, i], values[:, p - 1 - i], color=color,
                        alpha=_band_alpha(i), linewidth=0)
    if p % 2:
        ax.plot(steps, values[:, p // 2], color=color, linewidth=1.2)
    if steps.size == 1:  # one evaluation: bands have no width, show the points
        ax.plot(np.repeat(steps, p), values[0], "o", color=color, markersize=3)


def _percentile_legend(levels: np.ndarray, color: str) -> list:
    p = len(levels)  # ascending
    # Band i lies under bands 0..i, so its visible opacity is the layers' composite.
    opacity = [1 - math.prod(1 - _band_alpha(j) for j in range(i + 1)) for i in range(p // 2)]
    handles = [Patch(color=color, alpha=opacity[i], label=f"{levels[i]:g}–{levels[p - 1 - i]:g}%")
               for i in range(p // 2)]
    if p % 2:
        handles.append(Line2D([], [], color=color, linewidth=1.2, label=f"{levels[p // 2]:g}% (median)"
                              if levels[p // 2] == 50 else f"{levels[p // 2]:g}%"))
    return handles


def _draw_digits(sub, misclassified: dict) -> None:
    """The first ``MAX_DIGITS`` digits as one mosaic image in one axes (one axes per digit
    made the dashboard's layout several times slower), "pred X / true Y" above each."""
    images = np.asarray(misclassified["image"]).reshape(-1, 28, 28)
    predicted = np.asarray(misclassified["predicted"]).reshape(-1)
    label = np.asarray(misclassified["label"]).reshape(-1)
    n = min(len(images), MAX_DIGITS)
    rows = math.ceil(MAX_DIGITS / _DIGIT_COLS)  # fixed grid: digits keep one size whatever n is
    cell_w, cell_h = 28 + 8, 28 + 14  # gutters; the taller one holds the caption
    mosaic = np.zeros((rows * cell_h, _DIGIT_COLS * cell_w), np.uint8)
    ax = sub.subplots(gridspec_kw=dict(left=0.02, right=0.98, bottom=0.02, top=0.9))
    ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, _DIGIT_COLS)
        y, x = r * cell_h + 12, c * cell_w + 4
        mosaic[y:y + 28, x:x + 28] = images[i]
        ax.text(x + 14, y - 2, f"pred {int(predicted[i])} / true {int(label[i])}", fontsize=9,
                color="firebrick", ha="center", va="bottom")
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    sub.suptitle(f"misclassified test digits ({n} of {len(images)})")


_PERCENTILE_ROWS = {"weight_percentiles": ("weights", "C0"), "bias_percentiles": ("biases", "C2")}


def _draw_percentile_rows(sub, history: dict, last: int) -> None:
    """Percentile bands of each layer's weights (one row) and biases (the other) at every
    evaluation; for an ensemble, the members' mean."""
    levels, steps, rows = hist.percentile_means(history, _PERCENTILE_ROWS)  # rows: (E, L, P)
    k = hist.num_members(history)
    n_layers = rows["weight_percentiles"].shape[1]
    axes = sub.subplots(len(rows), n_layers, sharex=True, squeeze=False, gridspec_kw=dict(
        left=0.07, right=0.98, bottom=0.17, top=0.88, wspace=0.35, hspace=0.35))
    for r, (key, v) in enumerate(rows.items()):
        name, color = _PERCENTILE_ROWS[key]
        for layer, ax in enumerate(axes[r]):
            _draw_percentiles(ax, steps, v[:, layer], levels, color)
            ax.set_title(f"layer {layer + 1} {name}", fontsize=10)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("step", fontsize=9)
        axes[r, 0].set_ylabel(name)
    _set_step_limits(axes[0, 0], last)
    mean_note = f", mean over {k} members" if k > 1 else ""
    sub.suptitle(f"parameter percentiles per layer at each evaluation{mean_note}", fontsize=11)
    handles = _percentile_legend(levels, "0.35")  # one grey key serves both colours
    sub.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8)


def _dashboard_title(history: dict, label: str | None) -> str:
    """Final and best test accuracy; for an ensemble, the members' mean and the best member."""
    results = hist.final_and_best(history)
    top = max(results, key=lambda r: -math.inf if math.isnan(r.best_accuracy) else r.best_accuracy)
    if len(results) == 1:
        return (f"{label or 'run'} — test accuracy {top.final_accuracy:.4f} at step {top.final_step} "
                f"(best {top.best_accuracy:.4f} at step {top.best_step})")
    mean = hist.mean_final(history, "accuracy")
    diverged = sum(s is not None for s in hist.first_nonfinite_steps(history))
    return (f"{label or 'run'} — mean test accuracy {mean:.4f} at step {top.final_step} "
            f"(best member {top.best_accuracy:.4f} at step {top.best_step}) — ensemble of {len(results)}"
            + (f", {diverged} diverged" if diverged else ""))


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
    fig = _figure(DASHBOARD_SIZE)
    n_wrong = 0 if misclassified is None else len(misclassified["image"])
    left = fig
    if n_wrong:
        left, right = fig.subfigures(1, 2, width_ratios=[2.5, 1])
        _draw_digits(right, misclassified)
    top = left
    if all(k in history for k in ("percentiles", *_PERCENTILE_ROWS)):
        top, bottom = left.subfigures(2, 1, height_ratios=[1, 1.35])
        _draw_percentile_rows(bottom, history, hist.last_step(history))

    ax_acc, ax_loss = top.subplots(1, 2, gridspec_kw=dict(left=0.07, right=0.98, bottom=0.12,
                                                           top=0.82, wspace=0.15))
    _draw_panels((ax_acc, ax_loss), runs, ("accuracy", "loss"))
    ax_acc.set_ylim(_accuracy_zoom_bottom([history]), 1.005)
    ax_acc.set_title("accuracy")
    ax_acc.legend(handles=_legend_handles(runs, "accuracy"), loc="lower right", fontsize=8)
    ax_loss.set_ylim(0, _loss_zoom_top([history]))
    ax_loss.set_title("cross-entropy per image")

    title = _dashboard_title(history, label)
    if misclassified is not None and not n_wrong:
        title += " — no misclassified test digits"
    fig.suptitle(title, fontsize=13)
    return fig


# --- files --------------------------------------------------------------------


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` with the Agg canvas at its own dpi, untrimmed: inches x ``DPI`` pixels.

    One draw, then Pillow's fastest zlib level: the default level took longer than
    drawing the curves, for files only somewhat smaller.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    buf = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    return records.atomic_write_bytes(path, png_bytes(fig))


def plot_history(history: dict, out_dir: str | os.PathLike, *, misclassified: dict | None = None,
                 label: str | None = None, members: Sequence[str] | None = None) -> list[Path]:
    """Write ``accuracy.png``, ``cross_entropy.png`` and ``dashboard.png`` of one run.

    On Linux the dashboard, most of the drawing, is drawn in a forked child process
    while this one draws the other two (``_drawn_aside``); the files are the same.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = RunFiles.under(out_dir)
    labels = [label] if label else None
    with _drawn_aside(paths.dashboard_png, lambda: dashboard_figure(history, misclassified, label, members)):
        curves = [save_png(accuracy_figure(history, labels, members), paths.accuracy_png),
                  save_png(cross_entropy_figure(history, labels, members), paths.cross_entropy_png)]
    return [*curves, Path(paths.dashboard_png)]


@contextlib.contextmanager
def _drawn_aside(path: str | os.PathLike, draw: Callable[[], Figure]):
    """Save ``draw()`` to ``path`` in a forked child while the block runs, and wait for it.

    Matplotlib holds the GIL while it draws, so a thread would not overlap with this
    one (measured); a process does, and a forked one starts with everything imported.
    The child runs only this module's drawing code (which imports neither jax nor
    tensorflow, tested) and writes only its own file, then leaves with ``os._exit``
    (no atexit handlers, no second flush of inherited buffers).
    Where fork is not used, or the child failed, the figure is saved here after the
    block (so a drawing error is raised here, as without the child). If the block
    raises, the child is killed and reaped: nothing goes on drawing behind it.
    """
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            save_png(draw(), path)
            code = 0
        finally:
            os._exit(code)
    drawn = False
    try:
        yield
        if pid is not None:
            _, status = os.waitpid(pid, 0)
            pid, drawn = None, os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            records.remove_partial_writes(path, pid)
    if not drawn:
        save_png(draw(), path)


def _fork() -> int | None:
    """``os.fork()`` on Linux (0 in the child); None where it is not used or fails."""
    if sys.platform != "linux":  # macOS: fork without exec is unsafe with its frameworks
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # JAX warns at every fork of a process it runs in, as Python 3.12+ does in any
        # multi-threaded one: their threads' locks are not the child's to take, and the
        # drawing code above uses none of them.
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
        try:
            return os.fork()
        except OSError:
            return None


def expected_size(path: str | os.PathLike) -> tuple[int, int]:
    """The pixel size (width, height) ``plot`` gives the file named like ``path``."""
    name = Path(path).name
    is_dashboard = name.startswith(os.path.splitext(FILES.dashboard_png)[0])
    return DASHBOARD_SIZE if is_dashboard else FIGURE_SIZES[name]

