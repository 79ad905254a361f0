"""Görner's MLP ladder with seed error bars: OUT/ladder.{json,md,png}, each rung's run in OUT/<rung>.

    python scripts/ladder.py --dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist \\
        --seeds 0,1,2,3 --out runs/ladder
"""

import argparse
import sys

from jaxmlp.config import DATASETS, PRESETS, Config, ConfigError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="default: mnist")
    p.add_argument("--data-dir", help="TFDS data dir (default: TFDS's)")
    p.add_argument("--manual-dir", help="folder with the four MNIST-format IDX .gz files")
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds per rung (default: 0,1,2,3)")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated rungs (default: all)")
    p.add_argument("--steps", type=int, help="training steps per rung (default: the presets' 10,000)")
    p.add_argument("--eval-every", type=int, help="score the test set every this many steps (default 100)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace rungs already run in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = p.parse_args(argv)
    from jaxmlp import ladder  # no JAX yet: the flags are checked first

    try:
        seeds, presets = tuple(int(s) for s in args.seeds.split(",")), args.presets.split(",")
        kw = dict(steps=args.steps, eval_every=args.eval_every, log_every=args.steps or Config().steps,
                  data_dir=args.data_dir, manual_dir=args.manual_dir)  # a line as each rung ends
        ladder.configs(args.dataset, seeds, presets=presets, **kw)
    except (ConfigError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from jaxmlp import run
    try:
        ladder.run_ladder(args.dataset, out_dir=args.out, seeds=seeds, presets=presets,
                          overwrite=args.overwrite, quiet=args.quiet, **kw)
    except (run.Interrupted, *run.EXPECTED_ERRORS) as e:  # the rung's run folder says how far it got
        print(f"error: {e}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, run.Interrupted) else 1
    print(f"{args.out}/ladder.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
