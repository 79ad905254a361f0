"""Redraw a run's figures from its saved history, without training.

    python scripts/plot.py RUN_DIR                      # figures into RUN_DIR
    python scripts/plot.py RUN_A RUN_B --out compare/   # overlaid, with a legend

One run gets accuracy.png, cross_entropy.png and dashboard.png. Several runs
get accuracy.png and cross_entropy.png overlaid (labelled by directory name)
and one dashboard-<name>.png each (replacing those of an earlier comparison there);
--out is required then. An --out that holds another training run is refused, so that
no run's own figures are overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from jaxmlp import plot, records
from jaxmlp.runs import RunFiles, comparison_dashboards, is_run_folder, load_run, run_labels


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Redraw the figures of saved runs; returns the paths written.

    One run: its three figures, by default into its own folder. Several runs
    (``out_dir`` required): the two curve figures overlay them, labelled by
    ``run_labels``, and each gets a dashboard named by
    ``RunFiles.dashboards``. Every run is read before anything is drawn, so
    an unreadable one fails (``records.RecordError``, one line) with nothing written.
    """
    run_dirs = list(run_dirs)
    if out_dir is None and len(run_dirs) > 1:
        raise ValueError("--out DIR is required when plotting several runs")
    own = len(run_dirs) == 1 and (out_dir is None or os.path.realpath(out_dir) ==
                                  os.path.realpath(run_dirs[0]))
    out_dir = run_dirs[0] if out_dir is None else out_dir
    if not own and is_run_folder(out_dir):  # its figures would no longer be its own
        raise records.RecordError(f"{out_dir} holds a training run of its own; "
                                  f"draw into another folder")
    loaded = [load_run(d) for d in run_dirs]
    out = records.check_writable(out_dir, min_free_bytes=16 * 2**20)
    if len(run_dirs) > 1:  # an earlier comparison's dashboards would mix with this one's
        for stale in comparison_dashboards(out):
            stale.unlink()
    labels = run_labels(run_dirs)
    if len(run_dirs) == 1:
        _, history, wrong = loaded[0]
        return plot.plot_history(history, out, misclassified=wrong, label=labels[0])
    histories, paths = [h for _, h, _ in loaded], RunFiles.under(out)
    written = [plot.save_png(plot.accuracy_figure(histories, labels), paths.accuracy_png),
               plot.save_png(plot.cross_entropy_figure(histories, labels), paths.cross_entropy_png)]
    for label, name, (_, history, wrong) in zip(labels, RunFiles.dashboards(labels), loaded):
        written.append(plot.save_png(plot.dashboard_figure(history, wrong, label), out / name))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help=f"directory with a {RunFiles.history}")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNGs "
                        "(default: the run's own directory; required for several runs)")
    args = parser.parse_args(argv)
    try:
        written = plot_runs(args.run_dirs, args.out)
    except ValueError as e:
        parser.error(str(e))
    except records.RecordError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
