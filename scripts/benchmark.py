"""Benchmark jaxmlp's training paths side by side, on synthetic MNIST-shaped data.

    python scripts/benchmark.py                                   # the full sweep (minutes on CPU)
    python scripts/benchmark.py --quick --json bench.json         # CI-sized (seconds)
    python scripts/benchmark.py --batch-sizes 100,1000 --hidden 200,100,60,30 --hidden 1024,1024
    python scripts/benchmark.py --startup --json bench.json --plot bench.png
    python scripts/benchmark.py --quick --whole-run --dataset fashion_mnist \\
        --manual-dir /usr/share/datasets/fashion-mnist --data-dir /tmp/tfds  # + whole run vs 2017
    python scripts/benchmark.py --suite accelerator --json docs/benchmark-h200.json \\
        --plot docs/benchmark-h200.png [--data-npz fashion_mnist.npz]        # one GPU, under 8 minutes

Prints a table (see the README's benchmarking section for how to read it);
--json writes every figure with the device, versions and config; --plot draws
throughput against batch size and model-steps/s against ensemble size (the
accelerator suite adds each path at batch 100 and the seeds' final accuracies).
"""

from __future__ import annotations

import argparse
import sys
import time

from jaxmlp import bench, parallel

# Flags of one suite only: dest -> the suite ("default" or "accelerator").
_ONLY = {"hidden": "default", "no_compile_times": "default", "startup": "default",
         "startup_dataset": "default", "startup_manual_dir": "default", "whole_run": "default",
         "dataset": "default", "manual_dir": "default", "data_dir": "default",
         "whole_run_steps": "default", "whole_run_repeats": "default",
         "num_seeds": "accelerator", "schedule_steps": "accelerator",
         "data_npz": "accelerator", "budget": "accelerator"}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("default", "accelerator"), default="default",
                   help="default: every path against batch size and width; accelerator: parts "
                        "(a)-(e) of jaxmlp.bench.accelerator, sized for one GPU")
    p.add_argument("--quick", action="store_true", help="CI-sized run: small sizes, short timings")
    p.add_argument("--batch-sizes", type=_ints,
                   help="comma-separated (default: 100,1000,10000; accelerator: 100,...,65536)")
    p.add_argument("--hidden", type=_ints, action="append",
                   help="hidden widths, comma-separated; repeat to sweep widths (default: 200,100,60,30)")
    p.add_argument("--ensemble-sizes", type=_ints,
                   help="ensemble sizes K, each measured as K seeds and as K learning rates "
                        "(default: 1,4 on CPU, 1,4,16,64 elsewhere; accelerator: 1,4,16,64,256,1024)")
    p.add_argument("--variants", type=lambda t: tuple(v for v in t.split(",") if v),
                   help=f"paths to time (default: all of {','.join(bench.VARIANTS)})")
    p.add_argument("--repeats", type=int, help="timed repeats per path (default: 5; accelerator: 3)")
    p.add_argument("--seconds", type=float, help="seconds per repeat (default: 0.5; accelerator: 0.3)")
    p.add_argument("--matmul-size", type=int, help="n of the n x n ceiling matmul")
    p.add_argument("--no-compile-times", action="store_true", help="skip cold/warm compile timing")
    p.add_argument("--startup", action="store_true",
                   help="also time scripts/train.py from process start to its first step, cold and warm")
    p.add_argument("--startup-dataset", help="dataset for --startup (default: fashion_mnist)")
    p.add_argument("--startup-manual-dir",
                   help="IDX files for --startup (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--whole-run", action="store_true",
                   help="also time the whole default run of scripts/train.py, part by part, and "
                        "Görner's 2017 TF1 program on the same data (needs TensorFlow)")
    p.add_argument("--dataset", help="--whole-run's dataset (default: fashion_mnist)")
    p.add_argument("--manual-dir",
                   help="--whole-run's IDX files (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--data-dir", help="--whole-run's TFDS data dir (default: a fresh temporary one)")
    p.add_argument("--whole-run-steps", type=int, help="--whole-run's steps (default: 10000)")
    p.add_argument("--whole-run-repeats", type=int, help="--whole-run's warm jaxmlp runs, each "
                   "followed by a run of the 2017 program; medians reported (default: 3)")
    p.add_argument("--num-seeds", type=int, help="accelerator (e): seeds in one ensemble (default: 1000)")
    p.add_argument("--schedule-steps", type=int, help="accelerator (d), (e): steps (default: 10000)")
    p.add_argument("--data-npz", metavar="PATH",
                   help="accelerator (d), (e): an .npz with train_images uint8 (N,28,28), "
                        "train_labels, test_images, test_labels (default: learnable synthetic data)")
    p.add_argument("--budget", type=float,
                   help="accelerator: seconds for the whole suite, shared out among its parts (default: 420)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the figures")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v not in (None, False)}
    wrong = sorted("--" + k.replace("_", "-") for k in given if _ONLY.get(k, args.suite) != args.suite)
    if wrong:
        p.error(f"{', '.join(wrong)} not used by --suite {args.suite}")
    changes = {k: v for k, v in {
        "batch_sizes": args.batch_sizes,
        "hidden": tuple(args.hidden) if args.hidden else None,
        "ensemble_sizes": args.ensemble_sizes,
        "variants": args.variants,
        "repeats": args.repeats,
        "target_seconds": args.seconds,
        "matmul_size": args.matmul_size,
        "compile_times": False if args.no_compile_times else None,
        "startup": args.startup or None,
        "startup_dataset": args.startup_dataset,
        "startup_manual_dir": args.startup_manual_dir,
        "whole_run": args.whole_run or None,
        "dataset": args.dataset,
        "manual_dir": args.manual_dir,
        "data_dir": args.data_dir,
        "whole_run_steps": args.whole_run_steps,
        "whole_run_repeats": args.whole_run_repeats,
        "num_seeds": args.num_seeds,
        "schedule_steps": args.schedule_steps,
        "data_npz": args.data_npz,
        "budget_seconds": args.budget,
    }.items() if v is not None}
    accelerator = args.suite == "accelerator"
    cls = bench.AcceleratorConfig if accelerator else bench.BenchConfig
    try:
        config = cls.quick(**changes) if args.quick else cls(**changes)
    except ValueError as e:  # one line, before any work
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    # Before JAX starts: on CPU a device per core, so ensembles are also timed split over
    # them as the scripts run them (single-device paths measured the same speed either way).
    parallel.use_cpu_devices(parallel.usable_cores())
    started = time.perf_counter()
    log = None if args.quiet else (
        lambda line: print(f"[{time.perf_counter() - started:6.1f} s] {line}", file=sys.stderr, flush=True))
    if accelerator:
        result = bench.run_accelerator(config, log=log)
        print(bench.format_accelerator(result))
    else:
        result = bench.run_benchmark(config, log=log)
        print(bench.format_table(result))
    if args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        (bench.plot_accelerator if accelerator else bench.plot)(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
