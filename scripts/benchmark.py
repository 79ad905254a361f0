"""Time jaxmlp against a hand-written plain-JAX program and the 2017 TF1 program, in one call.

    python scripts/benchmark.py --json docs/benchmark-cpu.json --markdown docs/performance.md
    python scripts/benchmark.py --steps 200 --repeats 2          # a smoke test (a minute)
    python scripts/benchmark.py --suite accelerator --json docs/benchmark-accelerator.json
    python scripts/benchmark.py --render docs/benchmark-cpu.json docs/benchmark-accelerator.json \\
        --markdown docs/performance.md                           # the doc from JSON, nothing run

Prints the tables docs/performance.md holds (what each figure means is explained there).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("default", "accelerator"), default="default",
                   help="default: the seed run four ways (any backend); accelerator: fused vs "
                        "host-fed per batch size, and ensembles of seeds (one GPU, minutes)")
    p.add_argument("--steps", type=int, help="default: the whole run's steps (10000); "
                                             "accelerator: steps per timed call (500)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default: 5; accelerator: 3)")
    p.add_argument("--data", help="folder of the four Fashion-MNIST IDX .gz files "
                                  "(default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--synthetic", action="store_true", help="learnable MNIST-shaped random data")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write docs/performance.md from the JSON")
    p.add_argument("--render", nargs="+", metavar="JSON", help="render --markdown from these "
                                                               "results; measure nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.markdown and not (args.json or args.render):
        p.error("--markdown is rendered from JSON: give --json (or --render)")
    from jaxmlp.bench import report, suite

    if args.render:
        results, sources = [json.load(open(path)) for path in args.render], args.render
    else:
        log = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        arrays, source = suite.load_arrays(args.data or suite.FASHION, args.synthetic)
        run = suite.run_default if args.suite == "default" else suite.run_accelerator
        options = {k: v for k, v in (("steps", args.steps), ("repeats", args.repeats)) if v}
        results, sources = [run(arrays, source, log=log, **options)], [args.json] if args.json else []
        if args.json:
            report.write_json(args.json, results[0])
    text = report.render_markdown(*results, sources=sources)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
