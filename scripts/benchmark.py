"""Benchmark jaxmlp's training paths side by side, on synthetic MNIST-shaped data.

    python scripts/benchmark.py                                   # the full sweep (minutes on CPU)
    python scripts/benchmark.py --quick --json bench.json         # CI-sized (seconds)
    python scripts/benchmark.py --batch-sizes 100,1000 --hidden 200,100,60,30 --hidden 1024,1024
    python scripts/benchmark.py --startup --json bench.json --plot bench.png

Prints a table (see the README's benchmarking section for how to read it);
--json writes every figure with the device, versions and config; --plot draws
throughput against batch size and model-steps/s against ensemble size.
"""

from __future__ import annotations

import argparse
import sys
import time

from jaxmlp import bench


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
    p.add_argument("--quick", action="store_true", help="CI-sized run: batch 100, short timings")
    p.add_argument("--batch-sizes", type=_ints, help="comma-separated (default: 100,1000,10000)")
    p.add_argument("--hidden", type=_ints, action="append",
                   help="hidden widths, comma-separated; repeat to sweep widths (default: 200,100,60,30)")
    p.add_argument("--ensemble-sizes", type=_ints,
                   help="ensemble sizes K (default: 1,4 on CPU, 1,4,16,64 elsewhere)")
    p.add_argument("--variants", type=lambda t: tuple(v for v in t.split(",") if v),
                   help=f"paths to time (default: all of {','.join(bench.VARIANTS)})")
    p.add_argument("--repeats", type=int, help="timed repeats per path (default: 5)")
    p.add_argument("--seconds", type=float, help="seconds per repeat (default: 0.5)")
    p.add_argument("--matmul-size", type=int, help="n of the n x n ceiling matmul")
    p.add_argument("--no-compile-times", action="store_true", help="skip cold/warm compile timing")
    p.add_argument("--startup", action="store_true",
                   help="also time scripts/train.py from process start to its first step, cold and warm")
    p.add_argument("--startup-dataset", help="dataset for --startup (default: fashion_mnist)")
    p.add_argument("--startup-manual-dir",
                   help="IDX files for --startup (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of throughput against batch size")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
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
    }.items() if v is not None}
    try:
        config = bench.BenchConfig.quick(**changes) if args.quick else bench.BenchConfig(**changes)
    except ValueError as e:  # one line, before any work
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    log = None if args.quiet else (
        lambda line: print(f"[{time.perf_counter() - started:6.1f} s] {line}", file=sys.stderr, flush=True))
    result = bench.run_benchmark(config, log=log)
    print(bench.format_table(result))
    if args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
