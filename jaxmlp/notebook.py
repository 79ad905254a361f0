"""Jupyter helpers: a live chart of a run, one-line errors, and the figures of the seed notebook.

    from jaxmlp import notebook
    config = notebook.config("relu", dataset="fashion_mnist", manual_dir=...)
    dataset = notebook.load(config)
    result = notebook.train(config, dataset=dataset)   # redraws one chart in place

``reporter()`` gives the live-chart ``LiveReporter`` inside a Jupyter kernel and
the usual progress-bar ``report.Reporter`` anywhere else, so scripts see no change.
The helpers turn the library's expected errors into ``Stopped``, which IPython
shows as the script's one line (``error: <message>``) instead of a traceback;
"Run All" stops there. The notebook itself (docs/notebooks/seed.ipynb) only
calls these and the library: no training logic lives in it.
"""

from __future__ import annotations

import io
import math
import sys
import time
from typing import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxmlp import history as hist
from jaxmlp import report
from jaxmlp.config import GORNER_MNIST, PRESETS, Config, ConfigError

CLASS_NAMES = {  # the label names of each dataset, for showing an example
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
LADDER = tuple(PRESETS)
"""Görner's rungs in the talk's order: softmax, sigmoid, relu (the seed), + lr decay, + dropout."""


# --- one-line errors ---------------------------------------------------------------------------

class Stopped(Exception):
    """A run or a load stopped for a reason the user can fix; ``str`` is the script's line.

    IPython shows ``_render_traceback_`` in place of a traceback, so the cell's
    output is that one line, as ``scripts/train.py`` prints it.
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _one_line(fn, *args, **kwargs):
    """``fn(...)``, with the library's expected errors raised again as ``Stopped``."""
    from jaxmlp import run

    try:
        return fn(*args, **kwargs)
    except run.EXPECTED_ERRORS as e:
        raise Stopped(f"error: {e}") from None
    except (run.Interrupted, run.AlreadyComplete) as e:  # the script prints these bare, too
        raise Stopped(str(e)) from None


def config(preset: str = "relu", **overrides) -> Config:
    """``Config.from_preset(preset, **overrides)``; a bad value stops with one line."""
    try:
        return Config.from_preset(preset, **overrides)
    except ConfigError as e:
        raise Stopped(f"error: {e}") from None


def load(config: Config, *, progress: bool = True):
    """The config's dataset as host arrays (``data.load``); unloadable data stops with one line."""
    from jaxmlp import data

    return _one_line(data.load, config.dataset, data_dir=config.data_dir,
                     manual_dir=config.manual_dir, train_split=config.train_split,
                     test_split=config.test_split, progress=progress)


def train(config: Config, *, dataset=None, live: bool = True, quiet: bool = False, **kwargs):
    """``run.train_and_evaluate`` with a live chart in Jupyter (``live``), printing the
    script's final line; returns its ``Result``. Expected errors stop with one line.

    ``kwargs`` go to ``train_and_evaluate`` (``out_dir``, ``reporter``, ...).
    """
    from jaxmlp import run

    rep = kwargs.pop("reporter", None)
    if rep is None:
        rep = reporter(quiet=quiet) if live else report.Reporter(quiet=quiet)
    chart = rep if isinstance(rep, LiveReporter) else None
    if chart is not None:
        chart.draw_at_close = False  # one last frame, from the whole history, below
    try:
        result = _one_line(run.train_and_evaluate, config, dataset=dataset, quiet=quiet,
                           reporter=rep, **kwargs)
    except BaseException:
        if chart is not None:
            chart.flush()  # the chunks up to the failure
        raise
    if chart is not None:
        chart.finish(result.history)
    if not quiet:
        for line in run.final_lines(result.summary, kwargs.get("out_dir")):
            print(line)
    return result


# --- Jupyter or not ------------------------------------------------------------------------------

def in_jupyter() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython shell with a kernel attached)."""
    ipython = sys.modules.get("IPython")  # never imported here: a script that lacks it is no kernel
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def reporter(*, quiet: bool = False, **kwargs) -> report.Reporter:
    """The live-chart ``LiveReporter`` inside Jupyter, else (or when ``quiet``) the
    progress-bar ``report.Reporter``."""
    if quiet or not in_jupyter():
        return report.Reporter(quiet=quiet, **kwargs)
    return LiveReporter(**kwargs)


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered by the Agg canvas (no pyplot, so no global figure state)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def show(fig: Figure) -> None:
    """Display ``fig`` as a PNG in the notebook (plain ``Figure`` objects have no rich repr)."""
    from IPython.display import Image, display

    display(Image(data=png_bytes(fig), format="png"))


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
        self._display(png_bytes(self.figure()))
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
                f"test accuracy, mean of {acc.size}: {np.nanmean(np.where(alive, acc, np.nan)):.4f}")
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


# --- the seed notebook's pictures and numbers ----------------------------------------------------

def example_figure(dataset, index: int = 0) -> Figure:
    """Training image ``index`` of ``dataset`` with its label (and class name)."""
    label = int(dataset.train_labels[index])
    names = CLASS_NAMES.get(dataset.name)
    fig = Figure(figsize=(2.6, 2.9), dpi=100)
    ax = fig.subplots()
    ax.imshow(dataset.train_images[index], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    name = names[label] if names else str(label)
    ax.set_title(f"label {label}" + (f": {name}" if name != str(label) else ""), fontsize=10)
    return fig


def describe_model(config: Config) -> str:
    """The shapes of the model's parameters, layer by layer, and their count; from a trace
    of the initialisation (``jax.eval_shape``): nothing is computed or compiled."""
    import jax

    from jaxmlp import loop

    state = jax.eval_shape(lambda: loop.init_state(jax.random.key(config.seed), config))
    layers: dict[tuple, dict] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        names = [getattr(k, "key", getattr(k, "name", k)) for k in path]
        names = [n for n in names if n != "value"]  # the nnx.Variable's own attribute
        layers.setdefault(tuple(names[:-1]), {})[names[-1]] = tuple(leaf.shape)
    lines = [f"layer {i}: " + ", ".join(f"{name} {shape}" for name, shape in
                                        sorted(arrays.items(), reverse=True))  # kernel, bias
             for i, arrays in enumerate(layers.values(), 1)]
    count = sum(math.prod(shape) for arrays in layers.values() for shape in arrays.values())
    lines.append(f"{count:,} parameters; {config.optimizer} at learning rate "
                 f"{config.learning_rate:g} on the batch-mean cross-entropy, batch {config.batch_size}")
    return "\n".join(lines)


def loss_convention(config: Config, dataset, *, batch_size: int = 100) -> float:
    """The largest parameter difference between jaxmlp's first update (batch-mean loss at
    ``config.learning_rate``) and the 2017 program's (batch-summed loss at that rate divided
    by ``batch_size``), on the first training batch of ``dataset``: float rounding only."""
    import jax
    import optax

    from jaxmlp import loop, train

    if config.optimizer != "sgd" or config.dropout:
        raise Stopped("error: the 2017 loss convention is shown on a plain SGD rung "
                      "without dropout (softmax or relu)")

    @jax.jit  # one program for both updates: op-by-op dispatch would compile every op
    def largest_difference(key, batch):
        state = loop.init_state(key, config)

        def summed(params):  # the original's loss: cross-entropy summed over the batch
            logits, _ = train.forward(state, params, batch["image"], train=False)
            return train.cross_entropy(logits, batch["label"]).sum()

        tx = optax.sgd(config.learning_rate / batch_size)
        updates, _ = tx.update(jax.grad(summed)(state.params), tx.init(state.params))
        original = optax.apply_updates(state.params, updates)
        ours, _ = train.train_step(state, batch)
        diffs = jax.tree.map(lambda a, b: jax.numpy.max(jax.numpy.abs(a - b)), ours.params, original)
        return jax.numpy.max(jax.numpy.stack(jax.tree.leaves(diffs)))

    batch = {"image": dataset.train_images[:batch_size], "label": dataset.train_labels[:batch_size]}
    return float(largest_difference(jax.random.key(config.seed), batch))


def findings(result) -> dict:
    """The numbers the conclusions quote, from a run's summary and history."""
    s, h = result.summary, result.history
    steps, test_loss = hist.series(h, "test", "loss")
    mean_loss = hist.nan_reduce(np.nanmean, test_loss)
    i_min = int(np.nanargmax(-mean_loss)) if np.isfinite(mean_loss).any() else 0
    last = steps[-1]
    train_steps, train_acc = hist.series(h, "train", "accuracy")
    _, train_loss = hist.series(h, "train", "loss")
    width = max(last // 10, 1)  # the last tenth of the run, and as many steps before the best loss
    window = (train_steps > last - width) & (train_steps <= last)
    at_min = (train_steps > steps[i_min] - width) & (train_steps <= steps[i_min])
    mean_of = lambda v, w=window: float(np.nanmean(v[:, w])) if w.any() else math.nan
    best = np.atleast_1d(np.asarray(s["best_test_accuracy"], np.float64))
    top = int(np.argmax(np.where(np.isnan(best), -np.inf, best)))  # the best member
    return {
        "dataset": s["data"]["name"], "steps": int(s["steps"]), "members": best.size,
        "final_test_accuracy": float(np.nanmean(s["final_test_accuracy"])),  # members' mean
        "best_test_accuracy": float(best[top]),
        "best_test_step": int(np.atleast_1d(s["best_test_step"])[top]),
        "final_test_loss": float(np.nanmean(s["final_test_loss"])),
        "min_test_loss": float(mean_loss[i_min]), "min_test_loss_step": int(steps[i_min]),
        "late_test_loss": float(np.nanmean(mean_loss[steps > last - width])),
        "late_window": int(window.sum()),
        "late_train_accuracy": mean_of(train_acc), "late_train_loss": mean_of(train_loss),
        "train_loss_at_min": mean_of(train_loss, at_min),
        "train_seconds": float(s["timings"]["train_seconds"]),
        "eval_seconds": float(s["timings"]["eval_seconds"]),
        "compile_seconds": float(s["timings"]["compile_seconds"]),
    }


def conclusions(result) -> str:
    """Markdown bullets stating what the run shows, every number read from ``result``."""
    f = findings(result)
    gap = f["late_train_accuracy"] - f["final_test_accuracy"]
    rise = f["late_test_loss"] / f["min_test_loss"] - 1
    loss_line = (f"its lowest, **{f['min_test_loss']:.3f}**, came at step "
                 f"{f['min_test_loss_step']:,}; over the last {f['late_window']:,} steps it "
                 f"averaged **{f['late_test_loss']:.3f}** ({rise:+.0%}) and ended at "
                 f"**{f['final_test_loss']:.3f}**")
    if f["late_train_loss"] < f["train_loss_at_min"]:
        loss_line += (f" while the training loss kept falling (mean of {f['late_window']:,} "
                      f"steps: **{f['train_loss_at_min']:.3f}** up to step "
                      f"{f['min_test_loss_step']:,}, **{f['late_train_loss']:.3f}** at the end)")
        if rise > 0.05:
            loss_line += ": the network overfits, the talk's cue for dropout"
    return "\n".join([
        f"- **{f['dataset']}**, {f['steps']:,} steps: final test accuracy "
        f"**{f['final_test_accuracy']:.4f}**"
        + (f" (mean of {f['members']} members; best member" if f["members"] > 1 else ", best")
        + f" **{f['best_test_accuracy']:.4f}** at step {f['best_test_step']:,}"
        + (")." if f["members"] > 1 else "."),
        f"- Training minibatches over the last {f['late_window']:,} steps: mean accuracy "
        f"**{f['late_train_accuracy']:.4f}**, so the train/test gap is **{gap:.4f}**.",
        f"- Test cross-entropy per image: {loss_line}.",
        f"- Time: {f['train_seconds']:.1f} s of training steps, {f['eval_seconds']:.1f} s of "
        f"test-set evaluations, {f['compile_seconds']:.1f} s compiling.",
    ])


# --- the ladder ---------------------------------------------------------------------------------

RUN_FIELDS = ("dataset", "data_dir", "manual_dir", "train_split", "test_split", "batch_size",
              "eval_every", "eval_batch_size", "log_every")
"""What every rung of ``ladder`` takes from the base config: the data and the schedule."""


def ladder(base: Config, presets: Sequence[str] = LADDER, *, dataset=None, seeds=(0, 1, 2, 3),
           steps: int | None = None) -> dict:
    """Each rung of ``presets`` as an ensemble over ``seeds`` (one compiled program per rung),
    on ``base``'s data and schedule (``RUN_FIELDS``) for ``steps`` (default ``base.steps``).
    Returns {preset: Result}; prints one line per rung."""
    from jaxmlp import run

    shared = {k: getattr(base, k) for k in RUN_FIELDS}
    results = {}
    for name in presets:
        cfg = config(name, **shared, seeds=tuple(seeds), steps=steps or base.steps)
        results[name] = train(cfg, dataset=dataset, quiet=True)
        print(f"{name}: " + "; ".join(run.final_lines(results[name].summary, None)), flush=True)
    return results


def _finals(result) -> np.ndarray:
    """Final test accuracy of each member that did not diverge."""
    return np.asarray([m["final_test_accuracy"] for m in result.summary["members"]
                       if m["status"] != "diverged"], np.float64)


def ladder_table(results: dict) -> str:
    """Markdown: per rung, the members' final test accuracy (mean ± std, range) next to
    Görner's MNIST figure for that rung."""
    lines = ["| rung | members | final test accuracy, mean ± std | min – max | Görner, MNIST |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        acc = _finals(r)
        k = len(r.summary["members"])
        lost = f" ({k - acc.size} diverged)" if acc.size < k else ""
        stats = (f"{acc.mean():.4f} ± {acc.std(ddof=1) if acc.size > 1 else 0:.4f}"
                 if acc.size else "all diverged")
        spread = f"{acc.min():.4f} – {acc.max():.4f}" if acc.size else "–"
        lines.append(f"| {name} | {k}{lost} | {stats} | {spread} | {GORNER_MNIST.get(name, '–')} |")
    return "\n".join(lines)


def ladder_figure(results: dict) -> Figure:
    """Left: each rung's final test accuracy, mean with ± 1 std error bars, members as dots.
    Right: each rung's test accuracy over training, members' mean with their min–max band."""
    fig = Figure(figsize=(12, 4.6), dpi=100, layout="constrained")
    ax_bar, ax_curve = fig.subplots(1, 2, width_ratios=[1, 1.5])
    names = list(results)
    for i, name in enumerate(names):
        acc = _finals(results[name])
        color = f"C{i % 10}"
        if acc.size:
            ax_bar.errorbar([i], [acc.mean()], yerr=[acc.std(ddof=1) if acc.size > 1 else 0],
                            fmt="o", color=color, capsize=6, markersize=7, linewidth=2)
            ax_bar.plot(np.full(acc.size, i) + np.linspace(-0.12, 0.12, acc.size), acc, ".",
                        color=color, alpha=0.6)
        steps, values = hist.series(results[name].history, "test", "accuracy")
        ax_curve.fill_between(steps, hist.nan_reduce(np.nanmin, values),
                              hist.nan_reduce(np.nanmax, values), color=color, alpha=0.2, linewidth=0)
        ax_curve.plot(steps, hist.nan_reduce(np.nanmean, values), color=color, linewidth=1.6,
                      label=name)
    ax_bar.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=9)
    ax_bar.set_ylabel("final test accuracy")
    ax_bar.set_title("final test accuracy: mean ± 1 std (dots: members)", fontsize=10)
    ax_bar.grid(True, axis="y", alpha=0.3)
    late = np.concatenate([hist.late_test_values(r.history, "accuracy") for r in results.values()])
    if late.size:
        ax_curve.set_ylim(max(0.0, math.floor((late.min() - 0.02) * 20) / 20), 1.0)
    ax_curve.set_xlabel("training step")
    ax_curve.set_title("test accuracy: members' mean and min–max band", fontsize=10)
    ax_curve.grid(True, alpha=0.3)
    ax_curve.legend(loc="lower right", fontsize=8)
    return fig
