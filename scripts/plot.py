"""Redraw a run's figures from its saved history, without training.

    python scripts/plot.py RUN_DIR                      # figures into RUN_DIR
    python scripts/plot.py RUN_A RUN_B --out compare/   # overlaid, with a legend

One run gets accuracy.png, cross_entropy.png and dashboard.png. Several runs
get accuracy.png and cross_entropy.png overlaid (labelled by directory name)
and one dashboard-<name>.png each; --out is required then, so that no run's
own figures are overwritten by a comparison.
"""

from __future__ import annotations

import argparse
import sys

from jaxmlp import plot, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directory with a history.npz")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNGs "
                        "(default: the run's own directory; required for several runs)")
    args = parser.parse_args(argv)
    if len(args.run_dirs) > 1 and args.out is None:
        parser.error("--out DIR is required when plotting several runs")
    try:
        written = plot.plot_runs(args.run_dirs, args.out)
    except records.RecordError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
