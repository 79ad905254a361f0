"""Train every rung of Görner's ladder with N seeds; write ladder.{json,md,png}.

    python scripts/ladder.py --dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist \\
        --seeds 4 --out runs/ladder
    python scripts/ladder.py --dataset mnist --seeds 2 --steps 1000 --out /tmp/ladder   # a quick look

Each rung's seeds train as one vmapped ensemble, in its own run folder OUT/<preset>;
the data is loaded once. The work is ``jaxmlp.ladder.run_ladder``.
"""

from __future__ import annotations

import argparse
import sys

from jaxmlp.config import DATASETS, PRESETS, ConfigError


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _presets(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown presets {unknown or text!r}; accepted: "
                                         f"{', '.join(PRESETS)}")
    return names


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="default: mnist")
    p.add_argument("--data-dir", help="TFDS data dir (default: TFDS's)")
    p.add_argument("--manual-dir", help="folder with the four MNIST-format IDX .gz files")
    p.add_argument("--seeds", type=_positive, default=4, help="seeds per rung: 0..N-1 (default 4)")
    p.add_argument("--out", required=True, help="output folder: ladder.* and one run folder per rung")
    p.add_argument("--steps", type=_positive, help="training steps per rung (default: the presets' 10,000)")
    p.add_argument("--eval-every", type=_positive, help="score the test set every this many steps (default 100)")
    p.add_argument("--log-every", type=_positive, help="print a line every this many steps (default 1,000)")
    p.add_argument("--presets", type=_presets, default=tuple(PRESETS),
                   help=f"comma-separated rungs (default: all: {','.join(PRESETS)})")
    p.add_argument("--overwrite", action="store_true", help="replace rungs already run in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the table's path")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from jaxmlp import ladder, records  # no JAX yet: flags are checked first

    overrides = dict(steps=args.steps, eval_every=args.eval_every, log_every=args.log_every,
                     data_dir=args.data_dir, manual_dir=args.manual_dir)
    try:
        ladder.configs(args.dataset, args.seeds, presets=args.presets, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from jaxmlp import data, parallel, run

    # Before JAX starts: on CPU, each rung's ensemble gets a device per core.
    parallel.use_cpu_devices(parallel.split_count(args.seeds, parallel.usable_cores()))

    try:
        result = ladder.run_ladder(args.dataset, out_dir=args.out, seeds=args.seeds,
                                   presets=args.presets, overwrite=args.overwrite, quiet=args.quiet,
                                   log=None if args.quiet else lambda t: print(t, flush=True),
                                   **overrides)
    except run.Interrupted as e:  # the rung's folder says how far it got
        print(f"ladder interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, data.DataError, records.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ladder of {len(result['rungs'])} rungs x {len(result['seeds'])} seeds in "
          f"{result['wall_seconds']:.0f} s: {args.out}/ladder.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
