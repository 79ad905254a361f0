"""Train Görner's 5-layer MLP (2017) and write its records.

    python scripts/train.py                       # the seed experiment on MNIST -> runs/<time>-mnist
    python scripts/train.py --dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist
    python scripts/train.py --preset relu-lrdecay-dropout --seeds 0,1,2,3   # a ladder rung, 4 seeds
    python scripts/train.py --resume runs/latest  # continue a stopped run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from jaxmlp.config import PRESETS, Config, ConfigError, help_text, resumed


def _list(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a rung of Görner's ladder: sets the model and optimizer fields; flags "
                        "given explicitly override it (default: relu, the seed experiment)")
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        kind = {"hidden": _list(int), "seeds": _list(int), "learning_rates": _list(float)}.get(f.name)
        kind = kind or (type(f.default) if f.default is not None else str)
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help=f"{help_text(f.name)} (default: {shown})")
    p.add_argument("--out", help="output folder (default: a new runs/<UTC time>-<dataset>, with "
                                 "runs/latest pointing to it); one that holds a run is refused")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--distributed", action="store_true",
                   help="many hosts: call jax.distributed.initialize() first (auto-detected on "
                        "TPU pods and SLURM; elsewhere give the three flags below)")
    p.add_argument("--coordinator-address", metavar="HOST:PORT", help="with --distributed")
    p.add_argument("--num-processes", type=int, help="with --distributed")
    p.add_argument("--process-id", type=int, help="with --distributed")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name, None) is not None}
    from jaxmlp import records  # no JAX yet: flags are checked before paying for it

    try:
        if args.distributed and not (args.out or args.resume):
            raise ConfigError("--distributed needs --out DIR (or --resume DIR), one folder all processes see")
        if args.resume:
            if args.preset or args.out or args.overwrite:
                raise ConfigError("--resume continues the saved run in its own folder; "
                                  "drop --preset, --out and --overwrite")
            config = resumed(Config.from_dict(records.read_config(args.resume)), **given)
        else:
            config = Config.from_preset(args.preset or "relu", **given)
    except (ConfigError, records.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax

    from jaxmlp import run

    if args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; others ignore it
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    out = args.resume or args.out or records.default_run_dir("runs", config.dataset)
    try:
        result = run.train_and_evaluate(config, out_dir=out, resume=bool(args.resume),
                                        overwrite=args.overwrite, quiet=args.quiet)
    except run.AlreadyComplete as e:
        print(e, file=sys.stderr)
        return 0
    except (run.Interrupted, run.StoppedAtOnce) as e:
        print(e if isinstance(e, run.Interrupted) else
              f"stopped at once by a second signal; --resume {out} continues from the last "
              f"checkpoint, if one was saved", file=sys.stderr)
        return 128 + e.signum
    except run.EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the run's own handlers (imports, start-up)
        print("stopped during start-up: nothing was trained", file=sys.stderr)
        return 130
    finally:
        if not args.out and not args.resume and os.path.isdir(out):
            if os.listdir(out):
                records.point_latest(out)
            else:  # a default folder that got nothing
                os.rmdir(out)
    s = result.summary
    if not args.quiet and jax.process_index() == 0:  # process 0 wrote the records
        acc = s["final_test_accuracy"]
        acc = f"{acc:.4f}" if not config.is_ensemble else f"{min(acc):.4f}-{max(acc):.4f} over members"
        print(f"final test accuracy {acc} after {s['steps']} steps in {s['wall_seconds']:.1f} s; "
              f"records in {out}")
    for m in s["members"]:
        if m["status"] == "diverged":
            print(f"warning: member {m['name']} diverged at step {m['first_nonfinite_step']}; "
                  f"the others trained on", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
