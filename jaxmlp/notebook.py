"""The helpers of docs/notebooks/seed.ipynb: a live chart in Jupyter, and the seed's pictures,
numbers and ladder. No training logic lives in the notebook; it calls these and the library.

    from jaxmlp import notebook
    result = notebook.train(config, dataset=data)   # in Jupyter: one chart, redrawn in place
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxmlp import history as hist
from jaxmlp import plot, report
from jaxmlp.config import GORNER_MNIST, PRESETS, Config
from jaxmlp.live import LiveReporter

LADDER = tuple(PRESETS)
"""Görner's rungs in the talk's order: softmax, sigmoid, relu (the seed), + lr decay, + dropout."""
RUN_FIELDS = ("dataset", "data_dir", "manual_dir", "train_split", "test_split", "batch_size",
              "eval_every", "log_every")
"""What every rung of ``ladder`` takes from the base config: the data and the schedule."""


def in_jupyter() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython shell with a kernel attached)."""
    ipython = sys.modules.get("IPython")  # not imported here: a process without it is no kernel
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def reporter(*, quiet: bool = False) -> report.Reporter:
    """The live chart in Jupyter, else (or when ``quiet``) the progress bar."""
    return LiveReporter() if in_jupyter() and not quiet else report.Reporter(quiet=quiet)


def show(fig: Figure) -> None:
    """Display ``fig`` in the notebook (a bare ``Figure`` has no rich display of its own)."""
    from IPython.display import Image, display

    display(Image(data=plot.png_bytes(fig), format="png"))


def load(config: Config):
    """The config's dataset as host arrays (``data.load``)."""
    from jaxmlp import data

    return data.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                     train_split=config.train_split, test_split=config.test_split)


def final_line(history: dict) -> str:
    """The final test accuracy, as the training script prints it (an ensemble's mean and range)."""
    s = hist.summarize(history)
    if not hist.is_ensemble(history):
        return f"final test accuracy {s['final_test_accuracy']:.4f} after {s['steps']} steps"
    acc = np.asarray(s["final_test_accuracy"], np.float64)
    ok = acc[np.isfinite(acc)]
    spread = f"members {ok.min():.4f}-{ok.max():.4f}" if ok.size else "all diverged"
    return (f"final test accuracy {np.mean(ok) if ok.size else math.nan:.4f} (mean of {ok.size} of "
            f"{acc.size}; {spread}) after {s['steps']} steps")


def train(config: Config, **kwargs):
    """``run.train_and_evaluate(config, **kwargs)`` with the live chart in Jupyter (unless a
    ``reporter`` is given); prints ``final_line`` and returns the ``Result``."""
    from jaxmlp import run

    kwargs.setdefault("reporter", reporter(quiet=kwargs.get("quiet", False)))
    result = run.train_and_evaluate(config, **kwargs)
    print(final_line(result.history), flush=True)
    return result


# --- the seed run ----------------------------------------------------------------------------

def example_figure(dataset, index: int = 0) -> Figure:
    """Training image ``index`` of ``dataset`` with its label (and class name, if it has them)."""
    image, label, names = dataset.train_images[index], int(dataset.train_labels[index]), dataset.class_names
    fig = Figure(figsize=(2.6, 2.9), dpi=100)
    ax = fig.subplots()
    grey = image.ndim == 2 or image.shape[-1] == 1
    ax.imshow(image[..., 0] if image.ndim == 3 and grey else image, cmap="gray_r" if grey else None)
    ax.set_axis_off()
    ax.set_title(f"label {label}" + (f": {names[label]}" if names else ""), fontsize=10)
    return fig


def describe_model(module) -> str:
    """Each parameter of an ``nnx.Module`` with its shape, and their count."""
    from flax import nnx

    flat = list(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    lines = [f"{'.'.join(map(str, path))}: {tuple(v.shape)}" for path, v in flat]
    return "\n".join(lines + [f"{sum(math.prod(v.shape) for _, v in flat):,} parameters"])


def loss_convention(config: Config, dataset, *, batch_size: int = 100) -> float:
    """The largest parameter difference between one SGD step on the batch-mean loss at
    ``config.learning_rate`` (jaxmlp's) and one on the batch-summed loss at that rate /
    ``batch_size`` (the 2017 program's), from the same parameters: float rounding only."""
    import jax
    import optax

    from jaxmlp import model, train

    batch = {"image": dataset.train_images[:batch_size], "label": dataset.train_labels[:batch_size]}
    def summed(logits, labels):  # its batch mean, which the step minimises, is the batch sum
        return batch_size * train.cross_entropy(logits, labels)

    params = []
    for lr, loss in ((config.learning_rate, None), (config.learning_rate / batch_size, summed)):
        # A module of its own per state: train_step donates the state it is given.
        state = train.TrainState.create(model.from_config(config, jax.random.key(config.seed)),
                                        optax.sgd(lr), loss=loss)
        params.append(jax.tree.leaves(train.train_step(state, batch)[0].params))
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(*params))


def conclusions(history: dict) -> str:
    """Markdown bullets on what the run shows (an ensemble's members averaged), every
    number read from ``history``."""
    s = hist.summarize(history)
    mean = lambda v: float(hist.nan_reduce(np.nanmean, np.asarray(v, np.float64).reshape(-1)))  # noqa: E731
    steps, test_loss = hist.series(history, "test", "loss")
    last = hist.completed_steps(history)
    test_loss = hist.nan_reduce(np.nanmean, np.where(steps <= last, test_loss, np.nan))
    i = int(np.nanargmin(np.where(np.isfinite(test_loss), test_loss, np.nan)))
    width = max(last // 10, 1)  # the last tenth of the run, and as many steps up to the lowest loss
    t, train_loss = hist.series(history, "train", "loss")
    _, train_acc = hist.series(history, "train", "accuracy")
    late, before_min = (t > last - width) & (t <= last), (t > steps[i] - width) & (t <= steps[i])
    late_test = mean(test_loss[(steps > last - width) & (steps <= last)])
    rise = late_test / test_loss[i] - 1
    gap = mean(train_acc[:, late]) - mean(s["final_test_accuracy"])
    loss = (f"its lowest, **{test_loss[i]:.3f}**, came at step {steps[i]:,}; over the last "
            f"{width:,} steps it averaged **{late_test:.3f}** ({rise:+.0%}) and ended at "
            f"**{mean(s['final_test_loss']):.3f}**")
    if mean(train_loss[:, late]) < mean(train_loss[:, before_min]):
        loss += (f", while the training loss kept falling (mean of {width:,} steps: "
                 f"**{mean(train_loss[:, before_min]):.3f}** up to step {steps[i]:,}, "
                 f"**{mean(train_loss[:, late]):.3f}** at the end)")
        if rise > 0.05:
            loss += ": the network overfits, the talk's cue for dropout"
    members = f" (mean of {hist.num_members(history)} members)" if hist.is_ensemble(history) else ""
    return "\n".join([
        f"- {last:,} steps: final test accuracy **{mean(s['final_test_accuracy']):.4f}**{members}; "
        f"best **{np.nanmax(s['best_test_accuracy']):.4f}**.",
        f"- Training minibatches over the last {width:,} steps: mean accuracy "
        f"**{mean(train_acc[:, late]):.4f}**, so the train/test gap is **{gap:.4f}**.",
        f"- Test loss per example: {loss}.",
    ])


# --- the ladder ----------------------------------------------------------------------------------

def ladder(base: Config, presets: Sequence[str] = LADDER, *, dataset=None, seeds=(0, 1, 2, 3),
           steps: int | None = None) -> dict[str, dict]:
    """Each rung of ``presets`` as one ensemble over ``seeds`` (one compiled program per rung),
    on ``base``'s data and schedule (``RUN_FIELDS``) for ``steps`` (default ``base.steps``).
    Returns {preset: history}; prints a line per rung."""
    from jaxmlp import run

    shared = {k: getattr(base, k) for k in RUN_FIELDS}
    histories = {}
    for name in presets:
        config = Config.from_preset(name, **shared, seeds=tuple(seeds), steps=steps or base.steps)
        histories[name] = run.train_and_evaluate(config, dataset=dataset, quiet=True).history
        print(f"{name}: {final_line(histories[name])}", flush=True)
    return histories


def ladder_table(histories: dict[str, dict]) -> str:
    """Markdown: per rung, its members' final test accuracy (mean ± std, range) beside
    Görner's MNIST figure; diverged members are counted and left out."""
    lines = ["| rung | members | final test accuracy, mean ± std | min – max | Görner, MNIST |",
             "|---|---|---|---|---|"]
    for name, h in histories.items():
        acc = np.atleast_1d(np.asarray(hist.summarize(h)["final_test_accuracy"], np.float64))
        ok = acc[np.isfinite(acc)]
        lost = f" ({acc.size - ok.size} diverged)" if ok.size < acc.size else ""
        stats = (f"{ok.mean():.4f} ± {ok.std(ddof=1) if ok.size > 1 else 0:.4f} | "
                 f"{ok.min():.4f} – {ok.max():.4f}" if ok.size else "all diverged | –")
        lines.append(f"| {name} | {acc.size}{lost} | {stats} | {GORNER_MNIST.get(name, '–')} |")
    return "\n".join(lines)
