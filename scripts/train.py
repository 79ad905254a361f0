"""Train the 5-layer MNIST MLP (Görner 2017) and write its records.

    python scripts/train.py                       # the seed experiment on MNIST -> runs/<time>-mnist
    python scripts/train.py --dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist
    python scripts/train.py --preset relu-lrdecay-dropout --seeds 0,1,2,3   # a ladder rung, 4 seeds
    python scripts/train.py --resume runs/latest  # continue an interrupted run
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: startup time counts

import argparse
import dataclasses
import os
import signal
import sys
import threading


class _Stopped(BaseException):
    """SIGINT or SIGTERM before the run's own handlers took over (imports, start-up)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum, _frame):
    raise _Stopped(signum)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
if __name__ == "__main__":  # before the heavy imports: a stop there is one line, not a traceback
    for _s in _SIGNALS:
        signal.signal(_s, _stop)

from jaxmlp.config import PRESETS, Config, help_text

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
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a rung of Görner's ladder: sets the model and optimizer fields; "
                        "flags given explicitly override it (default: relu, the seed experiment)")
    for f in dataclasses.fields(Config):
        if f.name == "preset":
            continue
        kind = {"hidden": _ints, "seeds": _ints, "learning_rates": _floats}.get(f.name)
        kind = kind or (type(f.default) if f.default is not None else str)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                       help=f"{help_text(f.name)} (default: {_show(f.default)})")
    p.add_argument("--out", help="output folder (default: a new runs/<UTC time>-<dataset>, "
                                 "with runs/latest pointing to it); one that holds a run is refused")
    p.add_argument("--overwrite", action="store_true", help="clear the run already in --out first")
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


def _how_to_go_on(out) -> str:
    """After a stop at once: resume from the last checkpoint, if one was saved."""
    from jaxmlp import checkpoint, records, runs

    try:
        step = checkpoint.latest_step(os.fspath(runs.RunFiles.under(out).checkpoints))
    except records.RecordError:
        return f"no checkpoint was saved; start again with --out {out} --overwrite"
    return f"continue from the checkpoint at step {step} with --resume {out}"


def _show(v):
    return ",".join(map(str, v)) if isinstance(v, tuple) else v


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    here = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, _stop) for s in _SIGNALS} if here else {}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    try:
        return _main(args, run_starts=restore)
    except _Stopped as e:  # before the run's own handlers (``run.train_and_evaluate``'s)
        print("stopped during start-up: nothing was trained and nothing written", file=sys.stderr)
        return 128 + e.signum
    finally:
        restore()


def _main(args, run_starts) -> int:
    """The script after its flags are parsed; ``run_starts()`` hands signals back just
    before the run, which then handles them itself."""
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    from jaxmlp import records, runs  # no JAX: flags are checked before paying for it
    from jaxmlp.config import ConfigError, resumed

    try:
        if args.resume:
            if args.preset or args.out or args.overwrite:
                raise ConfigError("--resume continues the saved run in its own folder; "
                                  "drop --preset, --out and --overwrite")
            saved = Config.from_dict(runs.read_config(args.resume))
            config, out = resumed(saved, **given), args.resume
        else:
            config = Config.from_preset(args.preset or "relu", **given)
            out = args.out  # None: a new runs/<UTC time> folder, made just before the run
    except (ConfigError, records.RecordError) as e:  # bad flags or an unreadable run: no work done
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Only now pay for importing JAX and the data layer.
    import jax

    from jaxmlp import parallel, run

    made = beside = None
    if not args.distributed:  # before JAX starts: CPU devices for the members, or to score beside
        count, beside = parallel.cpu_layout(len(config.members), parallel.usable_cores())
        made = parallel.use_cpu_devices(count)
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPUs/TPUs ignore it
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    devices = eval_device = None
    if made and beside and jax.default_backend() == "cpu":  # train on one, score on the other
        devices, eval_device = jax.devices()[:1], jax.devices()[1]
    new_folder = out is None
    try:
        try:
            if new_folder:
                out = runs.new_run_dir("runs", config.dataset)
            run_starts()
            result = run.train_and_evaluate(config, out_dir=out, resume=bool(args.resume),
                                            overwrite=args.overwrite, quiet=args.quiet,
                                            devices=devices, eval_device=eval_device,
                                            started=_STARTED)
        finally:
            if new_folder and out is not None:  # a folder made for this run that got nothing
                runs.discard_if_empty(out)
    except run.AlreadyComplete as e:
        print(str(e), file=sys.stderr)
        return 0
    except run.Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except run.StoppedAtOnce as e:
        print(f"stopped at once by a second signal; {_how_to_go_on(out)}", file=sys.stderr)
        return 128 + e.signum
    except run.Diverged as e:  # an ensemble's members each get their warning line first
        if e.summary is not None and len(e.summary["members"]) > 1:
            for line in run.final_lines(e.summary, out):
                print(line, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except run.EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in run.final_lines(result.summary, out):
        if line.startswith("warning"):  # a diverged member: shown even with --quiet
            print(line, file=sys.stderr)
        elif not args.quiet:
            print(line)
    return 0


if __name__ == "__main__":
    code = main()
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        sys.exit(code)  # many processes: leave the coordination service the normal way
    # Everything is written, closed and flushed by now; skip the interpreter's teardown of
    # JAX's runtime and thread pools (~0.4 s measured), which has nothing left to save.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
