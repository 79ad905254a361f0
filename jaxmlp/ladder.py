"""Görner's MLP ladder with seed error bars.

``run_ladder`` trains every rung of ``config.PRESETS`` as one ensemble of seeds (the data
loaded once, each rung in its run folder ``OUT/<preset>``) and writes ``OUT/ladder.json``
(per rung: each seed's final and best test accuracy and final test cross-entropy, and
their mean, sample std, min and max), ``ladder.md`` (mean ± std per rung) and
``ladder.png`` (each seed, and error bars of mean ± std). Diverged seeds are counted and
left out of the statistics. No JAX is imported until a ladder runs.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmlp import records
from jaxmlp.config import GORNER_MNIST, PRESETS, Config

METRICS = ("final_test_accuracy", "best_test_accuracy", "final_test_loss")


def configs(dataset: str, seeds: Sequence[int], *, presets: Sequence[str] = tuple(PRESETS),
            **overrides) -> dict[str, Config]:
    """Each rung's Config: the preset, ``seeds`` as one ensemble, the ``overrides`` not None."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return {name: Config.from_preset(name, dataset=dataset, seeds=tuple(seeds), **overrides)
            for name in presets}


def run_ladder(dataset: str, *, out_dir, seeds: Sequence[int] = (0, 1, 2, 3),
               presets: Sequence[str] = tuple(PRESETS), data=None, overwrite: bool = False,
               quiet: bool = True, **overrides) -> dict:
    """Train every rung with ``seeds``, write ladder.{json,md,png} to ``out_dir``, and return
    what ladder.json holds. ``data``: a ``jaxmlp.data.Dataset`` instead of loading ``dataset``."""
    from jaxmlp import data as data_lib
    from jaxmlp import report, run

    started, out = time.perf_counter(), Path(out_dir)
    rungs = configs(dataset, seeds, presets=presets, **overrides)
    c = next(iter(rungs.values()))
    if data is None:
        data = data_lib.load(dataset, data_dir=c.data_dir, manual_dir=c.manual_dir,
                             train_split=c.train_split, test_split=c.test_split, progress=not quiet)
    results, reporter = {}, report.Reporter(quiet=quiet)
    for name, config in rungs.items():
        reporter.message(f"{name}: {len(config.seeds)} seeds x {config.steps:,} steps -> {out / name}")
        t0 = time.perf_counter()
        try:
            summary = run.train_and_evaluate(config, dataset=data, out_dir=str(out / name),
                                             overwrite=overwrite, reporter=reporter).summary
        except run.Diverged as e:  # every seed diverged; the records are saved: go on
            summary = e.summary
        results[name] = rung_result(config, summary, out / name, time.perf_counter() - t0)
        reporter.message(f"{name}: final test accuracy {_pm(results[name]['final_test_accuracy'], 4)}")
    ladder = {"dataset": dataset, "presets": list(rungs), "seeds": list(c.seeds), "steps": c.steps,
              "batch_size": c.batch_size, "eval_every": c.eval_every, "rungs": results,
              "data": {k: getattr(data, k) for k in ("version", "source", "train_split", "test_split")}
              | {"train_examples": len(data.train_labels), "test_examples": len(data.test_labels)},
              "environment": records.environment(), "wall_seconds": time.perf_counter() - started}
    write(out, ladder)
    return ladder


def spread(values: Sequence[float]) -> dict:
    """mean, sample std (n - 1; 0 for one value), min, max and n of ``values`` (NaN if none)."""
    v = np.asarray(values, np.float64)
    if not v.size:
        return dict.fromkeys(("mean", "std", "min", "max"), math.nan) | {"n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def rung_result(config: Config, summary: dict, run_dir, wall_seconds: float) -> dict:
    """One rung's entry of ladder.json, from its ensemble run's summary."""
    members = [{k: m[k] for k in ("seed", "status", "first_nonfinite_step")}
               | {k: float(m[k]) for k in METRICS[:2]} | {"final_test_loss": float(loss)}
               for m, loss in zip(summary["members"], np.ravel(summary["final_test_loss"]))]
    ok = [m for m in members if m["status"] != "diverged"]
    return {"config": config.to_dict(), "run_dir": os.path.abspath(run_dir), "steps": summary["steps"],
            "members": members, "diverged": [m["seed"] for m in members if m["status"] == "diverged"],
            **{k: spread([m[k] for m in ok]) for k in METRICS},
            "gorner_mnist_accuracy": GORNER_MNIST.get(config.preset), "wall_seconds": wall_seconds}


def _pm(s: dict, digits: int) -> str:
    return "n/a" if not s["n"] else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(ladder: dict) -> str:
    """ladder.md: what was run, then one row per rung."""
    d, seeds = ladder["data"], ladder["seeds"]
    lines = [f"# Görner's MLP ladder on {ladder['dataset']}", "",
             f"- Data: {ladder['dataset']} {d['version']} ({d['source']}), {d['train_examples']:,} "
             f"training images ({d['train_split']}), {d['test_examples']:,} test images ({d['test_split']}).",
             f"- Each rung: {ladder['steps']:,} steps of batch {ladder['batch_size']}, the whole test "
             f"set scored every {ladder['eval_every']} steps; {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))}) trained as one vmapped ensemble.",
             "- Values: mean ± sample standard deviation (n - 1) over seeds; diverged seeds are left "
             "out and counted. Best = the highest test accuracy of any evaluation.",
             f"- Wall time: {ladder['wall_seconds']:.0f} s in all, on "
             f"{ladder['environment'].get('backend', '?')}.", "",
             "| rung | final test accuracy | best test accuracy | final test cross-entropy | diverged "
             "| wall s | Görner's figure (his, MNIST) |", "|" + "---|" * 7]
    for name in ladder["presets"]:
        r = ladder["rungs"][name]
        cells = " | ".join(_pm(r[k], 3 if k == "final_test_loss" else 4) for k in METRICS)
        lines.append(f"| {name} | {cells} | {len(r['diverged'])}/{len(r['members'])} | "
                     f"{r['wall_seconds']:.0f} | {r['gorner_mnist_accuracy'] or 'n/a'} |")
    return "\n".join(lines + ["", "The last column is Görner's reported final MNIST test accuracy for "
                              "the rung (2017 talk), not measured here. Cross-entropy is per image (his "
                              "programs printed it per 100). Each rung's run folder holds its curves.", ""])


def figure(ladder: dict):
    """Per rung: each seed's final test accuracy and cross-entropy (dots), mean ± std (bars)."""
    from matplotlib.figure import Figure

    fig, names = Figure(figsize=(11, 4.5), dpi=120, layout="constrained"), ladder["presets"]
    for ax, metric, title in zip(fig.subplots(1, 2), ("final_test_accuracy", "final_test_loss"),
                                 ("final test accuracy", "final test cross-entropy (per image)")):
        for i, r in enumerate(ladder["rungs"][name] for name in names):
            seeds = [m[metric] for m in r["members"] if m["status"] != "diverged"]
            ax.plot(i + np.linspace(-0.12, 0.12, len(seeds)), seeds, "o", color="0.6", ms=4)
            if r[metric]["n"]:
                ax.errorbar(i + 0.25, r[metric]["mean"], yerr=r[metric]["std"], fmt="o", ms=7,
                            color=f"C{i}", capsize=6, elinewidth=2)
        ax.set_xticks(range(len(names)), names, rotation=12)
        ax.set(title=title, xlim=(-0.5, len(names) - 0.3))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Görner's MLP ladder on {ladder['dataset']}: {len(ladder['seeds'])} seeds per rung "
                 f"(dots), mean ± std (bars); {ladder['steps']:,} steps of batch {ladder['batch_size']}")
    return fig


def write(out: Path, ladder: dict) -> None:
    """ladder.json, ladder.md and ladder.png in ``out``, each atomically."""
    png = io.BytesIO()
    figure(ladder).savefig(png, format="png")
    records.atomic_write_json(out / "ladder.json", ladder)
    for name, data in (("ladder.md", markdown(ladder).encode()), ("ladder.png", png.getvalue())):
        records.atomic_write_bytes(out / name, data)
