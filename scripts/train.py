"""Train the 5-layer MNIST MLP (Görner 2017) and write its records.

    python scripts/train.py                       # the original experiment on MNIST
    python scripts/train.py --dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist
    python scripts/train.py --seeds 0,1,2,3       # an ensemble in one compiled program
    python scripts/train.py --resume runs/mnist   # continue an interrupted run
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: startup time counts

import argparse
import dataclasses
import json
import os
import sys

from jaxmlp.config import DATASETS, Config

_HELP = {  # flag help for each Config field
    "dataset": f"one of {', '.join(DATASETS)}",
    "data_dir": "TFDS data dir (default: TFDS's, ~/tensorflow_datasets)",
    "manual_dir": "folder with the four MNIST-format IDX .gz files to prepare through TFDS",
    "hidden": "hidden layer widths, comma-separated",
    "init_stddev": "stddev of the truncated-normal weight init",
    "learning_rate": "SGD learning rate on the batch-mean loss (0.3 == 0.003 on the summed loss)",
    "batch_size": "training batch size",
    "steps": "training steps",
    "eval_every": "score the whole test set every this many steps",
    "eval_batch_size": "test images per forward pass",
    "log_every": "print a line every this many steps",
    "checkpoint_every": "save a checkpoint every this many steps (0: only at the end)",
    "seed": "random seed",
    "seeds": "ensemble: one model per seed, comma-separated (e.g. 0,1,2,3)",
    "learning_rates": "ensemble: one model per learning rate, comma-separated",
}


_RESUMABLE = {"data_dir", "manual_dir", "log_every", "checkpoint_every", "eval_batch_size"}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        kind = {"hidden": _ints, "seeds": _ints, "learning_rates": _floats}.get(f.name)
        kind = kind or (type(f.default) if f.default is not None else str)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help=f"{_HELP[f.name]} (default: {_show(f.default)})")
    p.add_argument("--out", default="runs/latest", help="output folder (default: runs/latest)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--compile-cache", default=os.path.expanduser("~/.cache/jaxmlp/xla"),
                   metavar="DIR", help="JAX's persistent compilation cache, so later runs skip "
                   "compiling ('' to turn off; default: ~/.cache/jaxmlp/xla)")
    p.add_argument("--distributed", action="store_true",
                   help="many hosts: call jax.distributed.initialize() first (auto-detected on "
                   "TPU pods and SLURM; elsewhere give the three flags below)")
    p.add_argument("--coordinator-address", metavar="HOST:PORT", help="with --distributed: process 0's address")
    p.add_argument("--num-processes", type=int, help="with --distributed: how many processes")
    p.add_argument("--process-id", type=int, help="with --distributed: this process's index")
    return p


def _show(v):
    return ",".join(map(str, v)) if isinstance(v, tuple) else v


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        if args.resume:
            with open(os.path.join(args.resume, "config.json")) as f:
                saved = Config.from_dict(json.load(f))
            # Only where the data lives and how often to report may change on resume; the
            # rest defines the run the checkpoint belongs to.
            changed = sorted(k for k, v in given.items() if k not in _RESUMABLE
                             and getattr(saved, k) != getattr(saved.replace(**{k: v}), k))
            if changed:
                raise ValueError(f"--resume continues the saved run; drop --{', --'.join(c.replace('_', '-') for c in changed)}")
            config = saved.replace(**given)
            out = args.resume
        else:
            config = Config(**given)
            out = args.out
    except (ValueError, OSError) as e:  # bad flags or an unreadable run: one line, no work done
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Only now pay for importing JAX and the data layer.
    import jax

    from jaxmlp import run

    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs/TPUs ignore it
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    try:
        _, history = run.train_and_evaluate(config, out_dir=out, resume=bool(args.resume),
                                            quiet=args.quiet, started=_STARTED)
    except run.Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("stopped at once by a second interrupt; resume from the last checkpoint", file=sys.stderr)
        return 130
    except run.EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        acc = s["final_test_accuracy"]
        acc = acc if isinstance(acc, float) else max(acc)
        print(f"final test accuracy {acc:.4f} after {s['steps']} steps "
              f"in {s['wall_seconds']:.1f} s; records in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
