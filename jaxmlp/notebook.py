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

import math
import sys
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxmlp import history as hist
from jaxmlp import plot, report
from jaxmlp.live import LiveReporter
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


def show(fig: Figure) -> None:
    """Display ``fig`` as a PNG in the notebook (plain ``Figure`` objects have no rich repr)."""
    from IPython.display import Image, display

    display(Image(data=plot.png_bytes(fig), format="png"))


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
