"""Redraw figures from saved run folders, without training.

    python scripts/plot.py RUN_DIR                      # its three figures, into RUN_DIR
    python scripts/plot.py RUN_A RUN_B --out compare/   # the runs overlaid, and a dashboard each

An --out that holds a training run other than the inputs is refused: its figures would
no longer be its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxmlp import plot, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a folder with a history.npz")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the PNGs go (default: the run's own folder; required for several runs)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.run_dirs) > 1:
        parser.error("--out DIR is required for several runs")
    out = args.out or args.run_dirs[0]
    try:
        if (out / "config.json").exists() and out.resolve() not in [d.resolve() for d in args.run_dirs]:
            raise ValueError(f"{out} holds a training run of its own; draw into another folder")
        runs = [plot.load_run(d) for d in args.run_dirs]  # all read before anything is drawn
    except (OSError, ValueError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    names = [d.resolve().name for d in args.run_dirs]
    names = names if len(set(names)) == len(names) else [f"{i}-{n}" for i, n in enumerate(names)]
    class_names = [((s or {}).get("data") or {}).get("class_names") for s, _, _ in runs]
    if len(runs) == 1:
        (_, history, wrong), = runs
        written = plot.plot_history(history, out, misclassified=wrong, class_names=class_names[0],
                                    title=names[0])
    else:
        out.mkdir(parents=True, exist_ok=True)
        histories = [h for _, h, _ in runs]
        figures = {"accuracy.png": plot.accuracy_figure(histories, names),
                   "cross_entropy.png": plot.cross_entropy_figure(histories, names)}
        for name, (_, history, wrong), classes in zip(names, runs, class_names):
            figures[f"dashboard-{name}.png"] = plot.dashboard_figure(history, wrong, class_names=classes,
                                                                     title=name)
        written = [out / name for name in figures]
        for path, fig in zip(written, figures.values()):
            records.atomic_write_bytes(path, plot.png_bytes(fig))
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
