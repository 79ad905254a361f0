"""Görner's ladder: every preset, N seeds each, one table and one figure.

``run_ladder`` trains each rung of ``config.PRESETS`` as one vmapped ensemble of
N seeds through ``run.train_and_evaluate`` (each rung keeps its own run folder,
``OUT/<preset>``), loading the data once, then writes three files to ``OUT``:

  ladder.json   per rung: config, members, mean/std/min/max over seeds of the final
                and best test accuracy and of the final test cross-entropy
  ladder.md     that table beside Görner's reported MNIST figure for the rung
  ladder.png    test accuracy and test cross-entropy against step: the mean over
                seeds, with a min-max band

Members that diverge are reported (status, first non-finite step) and left out
of the means; they never stop the ladder.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxmlp import history as hist
from jaxmlp import records, runs
from jaxmlp.config import GORNER_MNIST, PRESETS, Config

FILES = ("ladder.json", "ladder.md", "ladder.png")
METRICS = ("final_test_accuracy", "best_test_accuracy", "final_test_loss")
FIGURE_SIZE = (1400, 560)
"""Pixel size (width, height) of ladder.png."""


def configs(dataset: str, seeds: int, *, presets: Sequence[str] = tuple(PRESETS),
            **overrides) -> dict[str, Config]:
    """The Config of each rung: the preset, seeds 0..N-1 as one ensemble, and ``overrides``
    (steps, eval_every, data_dir, ...). Raises ``ConfigError`` before any work is done."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return {name: Config.from_preset(name, dataset=dataset, seeds=tuple(range(seeds)), **overrides)
            for name in presets}


def run_ladder(dataset: str, *, out_dir: str | os.PathLike, seeds: int,
               presets: Sequence[str] = tuple(PRESETS), data=None, overwrite: bool = False,
               quiet: bool = True, log: Callable[[str], None] | None = None, **overrides) -> dict:
    """Train every rung with ``seeds`` seeds and write ladder.{json,md,png} to ``out_dir``.

    ``data``: a ``jaxmlp.data.Dataset`` to use instead of loading ``dataset`` (tests).
    ``overrides``: Config fields shared by every rung (steps, eval_every, log_every,
    data_dir, manual_dir, ...). Returns what ladder.json holds.
    """
    from jaxmlp import data as data_lib
    from jaxmlp import plot, run  # noqa: F401 (plot: fail now, not after the training)

    log = log or (lambda text: None)
    started = time.perf_counter()
    rung_configs = configs(dataset, seeds, presets=presets, **overrides)
    out = records.check_writable(out_dir)
    taken = [name for name in rung_configs
             if any((out / name / f).exists() for f in runs.RunFiles.all_names())]
    if taken and not overwrite:  # refuse before loading anything, not at the third rung
        raise records.RecordError(f"{out} already holds the rungs {', '.join(taken)}; "
                                  f"pass overwrite (--overwrite) to replace them")
    if data is None:
        first = next(iter(rung_configs.values()))
        data = data_lib.load(dataset, data_dir=first.data_dir, manual_dir=first.manual_dir,
                             train_split=first.train_split, test_split=first.test_split,
                             progress=not quiet)
    data_seconds = time.perf_counter() - started

    rungs, histories = {}, {}
    for name, config in rung_configs.items():
        run_dir = out / name
        log(f"{name}: {len(config.members)} seeds x {config.steps} steps -> {run_dir}")
        t0 = time.perf_counter()
        try:
            history = run.train_and_evaluate(config, out_dir=str(run_dir), dataset=data,
                                             overwrite=overwrite, quiet=quiet).history
        except run.Diverged:  # every member diverged; the record is saved: report it, go on
            history = runs.load_run(run_dir)[1]
        histories[name] = history
        rungs[name] = rung_result(config, history, run_dir, time.perf_counter() - t0)
        log(describe_rung(name, rungs[name]))

    first = next(iter(rung_configs.values()))
    ladder = {
        "dataset": dataset,
        "data": {"version": data.version, "source": data.source,
                 "train_split": getattr(data, "train_split", first.train_split),
                 "test_split": getattr(data, "test_split", first.test_split),
                 "train_examples": int(len(data.train_labels)),
                 "test_examples": int(len(data.test_labels))},
        "presets": list(rung_configs),  # the ladder's order (the file's keys are sorted)
        "seeds": list(first.seeds),
        "steps": first.steps,
        "batch_size": first.batch_size,
        "eval_every": first.eval_every,
        "data_seconds": data_seconds,
        "rungs": rungs,
        "environment": records.environment(),
    }
    ladder["wall_seconds"] = time.perf_counter() - started  # before plotting: training and data
    write(out, ladder, histories)
    return ladder


def rewrite(out_dir: str | os.PathLike) -> dict:
    """Rewrite ladder.{json,md,png} of a finished ladder from its files, without training:
    the rungs are re-read from their run folders' histories (after a change to the table or
    the figure, say). Timings, data and environment are kept from ladder.json."""
    out = Path(out_dir)
    try:
        ladder = json.loads((out / "ladder.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise records.RecordError(f"cannot read {out / 'ladder.json'}: {e}") from e
    order = ladder.get("presets") or [name for name in PRESETS if name in ladder["rungs"]]
    histories, rungs = {}, {}
    for name in order:
        old = ladder["rungs"][name]
        histories[name] = runs.load_run(old["run_dir"])[1]
        rungs[name] = rung_result(Config.from_dict(old["config"]), histories[name], old["run_dir"],
                                  old["wall_seconds"])
    ladder = {**ladder, "presets": order, "rungs": rungs}
    write(out, ladder, histories)
    return ladder


# --- results ---------------------------------------------------------------------


def member_results(history: dict, members: Sequence[tuple[int, float]]) -> list[dict]:
    """Per member, read straight from the run's (truncated) history: status, first
    non-finite step, final and best test accuracy, final test loss.

    The final values are the last evaluation's; a diverged member's are NaN (it is
    frozen, and frozen members score NaN), its best is from before it diverged.
    """
    train_steps, train_loss = hist.series(history, "train", "loss")
    test_steps, test_loss = hist.series(history, "test", "loss")
    _, test_acc = hist.series(history, "test", "accuracy")
    rows = []
    for k, (seed, lr) in enumerate(members):
        bad = [int(s[np.argmax(~np.isfinite(v))]) for s, v in
               ((train_steps, train_loss[k]), (test_steps, test_loss[k])) if (~np.isfinite(v)).any()]
        acc = np.where(np.isfinite(test_acc[k]), test_acc[k], -np.inf)
        best = int(np.argmax(acc))
        rows.append({
            "seed": seed, "learning_rate": lr,
            "status": "diverged" if bad else "finite",
            "first_nonfinite_step": min(bad) if bad else None,
            "final_step": int(test_steps[-1]),
            "final_test_accuracy": float(test_acc[k, -1]),
            "best_test_accuracy": float(test_acc[k, best]) if np.isfinite(acc[best]) else math.nan,
            "best_test_step": int(test_steps[best]),
            "final_test_loss": float(test_loss[k, -1]),
        })
    return rows


def spread(values: Sequence[float]) -> dict:
    """mean, sample std (n - 1; 0 for one value), min, max and n of the finite ``values``."""
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def rung_result(config: Config, history: dict, run_dir, wall_seconds: float) -> dict:
    """One rung's entry of ladder.json."""
    members = member_results(history, config.members)
    ok = [m for m in members if m["status"] == "finite"]
    return {
        "config": config.to_dict(),
        "description": describe_config(config),
        "run_dir": os.path.abspath(run_dir),
        "steps": max(m["final_step"] for m in members),
        "members": members,
        "diverged": [m["seed"] for m in members if m["status"] == "diverged"],
        **{metric: spread([m[metric] for m in ok]) for metric in METRICS},
        "gorner_mnist_accuracy": GORNER_MNIST.get(config.preset),
        "wall_seconds": wall_seconds,
    }


def describe_config(c: Config) -> str:
    """The rung in a few words: layers, activation, optimizer and its schedule, dropout."""
    layers = "784-" + "".join(f"{h}-" for h in c.hidden) + "10"
    act = f", {c.activation}" if c.hidden else ""
    lr = (f"lr {c.learning_rate:g}->{c.lr_min:g} (e-fold {c.lr_decay_steps})" if c.lr_decay_steps
          else f"lr {c.learning_rate:g}")
    extra = "".join([f", bias {c.bias_init:g}" if c.bias_init else "",
                     f", dropout {c.dropout:g}" if c.dropout else ""])
    return f"{layers}{act}, {c.optimizer} {lr}{extra}"


def describe_rung(name: str, rung: dict) -> str:
    """A one-line progress message."""
    a = rung["final_test_accuracy"]
    lost = f", {len(rung['diverged'])} diverged" if rung["diverged"] else ""
    return (f"{name}: final test accuracy {_pm(a, 4)} over {a['n']} seeds{lost} "
            f"({rung['wall_seconds']:.0f} s)")


def _pm(s: dict, digits: int) -> str:
    return "n/a" if s["n"] == 0 else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


# --- files -------------------------------------------------------------------------


def write(out: Path, ladder: dict, histories: dict[str, dict]) -> list[Path]:
    """ladder.json, ladder.md and ladder.png in ``out``, each atomically."""
    from jaxmlp import plot  # matplotlib only once the ladder has run

    return [records.atomic_write_json(out / "ladder.json", ladder),
            records.atomic_write_bytes(out / "ladder.md", markdown(ladder).encode("utf-8")),
            records.atomic_write_bytes(out / "ladder.png", plot.png_bytes(figure(ladder, histories)))]


def markdown(ladder: dict) -> str:
    """The ladder's table, with what it was measured on."""
    d = ladder["data"]
    seeds = ladder["seeds"]
    lines = [
        f"# Görner's MLP ladder on {ladder['dataset']}",
        "",
        f"- Data: {ladder['dataset']} {d['version']} ({d['source']}), {d['train_examples']:,} training "
        f"images ({d['train_split']}), {d['test_examples']:,} test images ({d['test_split']}).",
        f"- Each rung: {ladder['steps']:,} steps of batch {ladder['batch_size']}, the whole test set "
        f"scored every {ladder['eval_every']} steps; {len(seeds)} seeds ({', '.join(map(str, seeds))}) "
        "trained as one vmapped ensemble.",
        "- Values: mean ± sample standard deviation (n - 1) over seeds; diverged members are "
        "left out and counted. Best = the highest test accuracy of any evaluation.",
        f"- Wall time: {ladder['wall_seconds']:.0f} s in all ({ladder['data_seconds']:.0f} s loading "
        f"the data), on {ladder['environment'].get('backend', '?')} "
        f"({ladder['environment'].get('device_kind', '?')}).",
        "",
        "| rung | model and optimizer | final test accuracy | best test accuracy "
        "| final test cross-entropy | diverged | wall s | Görner's figure (his, MNIST) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in ladder["rungs"].items():
        lines.append(
            f"| {name} | {r['description']} | {_pm(r['final_test_accuracy'], 4)} "
            f"| {_pm(r['best_test_accuracy'], 4)} | {_pm(r['final_test_loss'], 3)} "
            f"| {len(r['diverged'])}/{len(r['members'])} | {r['wall_seconds']:.0f} "
            f"| {r['gorner_mnist_accuracy'] or 'n/a'} |")
    lines += [
        "",
        "The last column is Görner's reported final MNIST test accuracy for the rung (2017 talk), "
        "not measured here, and on MNIST, not on this dataset. Cross-entropy is per image "
        "(his programs printed it per 100 images).",
        "",
        "Each rung's run record (history, summary, figures) is in its own folder:",
        "",
        *[f"- {name}: `{r['run_dir']}`" for name, r in ladder["rungs"].items()],
        "",
    ]
    diverged = [(name, m) for name, r in ladder["rungs"].items() for m in r["members"]
                if m["status"] == "diverged"]
    if diverged:
        lines += ["Diverged members:", ""]
        lines += [f"- {name}: seed {m['seed']}, first non-finite step {m['first_nonfinite_step']}"
                  for name, m in diverged]
        lines.append("")
    return "\n".join(lines)


def curves(history: dict, members: list[dict], metric: str):
    """(steps (E,), mean, min, max (E,)) of the test ``metric`` over the members that
    did not diverge (all of them if every one did: their curves then end in NaN)."""
    steps, values = hist.series(history, "test", metric)
    keep = [i for i, m in enumerate(members) if m["status"] == "finite"] or list(range(len(members)))
    v = values[keep]
    return (steps, hist.nan_reduce(np.nanmean, v), hist.nan_reduce(np.nanmin, v),
            hist.nan_reduce(np.nanmax, v))


def figure(ladder: dict, histories: dict[str, dict]):
    """Test accuracy and test cross-entropy of every rung against step: mean over seeds,
    min-max band. Axes zoom on the part after the first tenth of the run."""
    from matplotlib.figure import Figure

    from jaxmlp import plot

    w, h = FIGURE_SIZE
    fig = Figure(figsize=(w / plot.DPI, h / plot.DPI), dpi=plot.DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    n_seeds = len(ladder["seeds"])
    for ax, metric, title in ((axes[0], "accuracy", "test accuracy"),
                              (axes[1], "loss", "test cross-entropy (per image)")):
        late = []
        for i, (name, history) in enumerate(histories.items()):
            rung = ladder["rungs"][name]
            steps, mean, lo, hi = curves(history, rung["members"], metric)
            color = f"C{i % 10}"
            final = rung[f"final_test_{metric}"]
            label = f"{name} ({_pm(final, 4 if metric == 'accuracy' else 3)})"
            ax.plot(steps, mean, color=color, linewidth=1.8, label=label)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
            tail = steps >= 0.1 * steps[-1]
            late.append(np.concatenate([lo[tail], hi[tail]]))
        late = np.concatenate(late) if late else np.zeros(0)
        late = late[np.isfinite(late)]
        if late.size:
            lo_y, hi_y = float(late.min()), float(late.max())
            pad = 0.05 * max(hi_y - lo_y, 1e-3)
            ax.set_ylim(max(0.0, lo_y - pad), min(1.0, hi_y + pad) if metric == "accuracy" else hi_y + pad)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right", fontsize=9,
                  title="final: mean ± std over seeds", title_fontsize=9)
    fig.suptitle(f"Görner's MLP ladder on {ladder['dataset']}: mean of {n_seeds} seeds, "
                 f"min-max band; {ladder['steps']:,} steps of batch {ladder['batch_size']}")
    return fig
