"""Agreement across seeds on real data: jaxmlp against the 2017 program, on Fashion-MNIST.

    python scripts/fidelity.py --data-dir /tmp/tfds --manual-dir /usr/share/datasets/fashion-mnist
    python scripts/fidelity.py --data-dir /tmp/tfds --steps 200 --seeds 0,1 --out /tmp/f.md  # a look

jaxmlp trains the seed experiment as one ensemble of a model per seed; the 2017 graph
(``jaxmlp.bench.original.build``) trains once per seed, on the same arrays (TFDS's
``train[5000:]``, the original's 55,000, and ``test``). No random numbers are shared, so
this compares distributions: final test accuracy per seed, mean ± std and Welch's t, over
all seeds and over the runs that did not collapse, in a Markdown report (default
docs/fidelity.md). Needs TensorFlow (the ``prepare`` extra) and minutes on a CPU; not run
in CI (``tests/test_seed_oracle.py`` is the exact, step-by-step check).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time

import numpy as np

DATASET, TRAIN_SPLIT, TEST_SPLIT = "fashion_mnist", "train[5000:]", "test"
B = 100  # the original's batch
COLLAPSED_BELOW = 0.2  # a final test accuracy under this (chance is 0.1): the run collapsed


def run_original(tf, seed: int, steps: int, train_x, train_y, test_x, test_y) -> float:
    """The 2017 program for ``steps`` steps from its ``tf.set_random_seed(seed)`` draw, on its
    reader's batches (the first epoch in data order, then a shuffle at each epoch's end, here
    seeded) of its reader's arrays (float32 images in [0, 1], one-hot labels); returns the
    final test accuracy."""
    from jaxmlp.bench.original import build

    graph = tf.Graph()
    with graph.as_default():
        g = build(tf, seed=seed)
        init = tf.compat.v1.global_variables_initializer()
    n, shuffle = len(train_x), np.random.RandomState(seed)
    order, per_epoch = np.arange(n), n // B  # the first epoch is not shuffled
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        for i in range(steps):
            if i and i % per_epoch == 0:  # "Finished epoch ... Shuffle the data"
                order = shuffle.permutation(n)
            idx = order[(i % per_epoch) * B:(i % per_epoch + 1) * B]
            sess.run(g["train_step"], {g["X"]: train_x[idx], g["Y_"]: train_y[idx]})
        return float(sess.run(g["accuracy"], {g["X"]: test_x, g["Y_"]: test_y}))


def mean_std(v) -> str:
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f} (n={len(v)})" if len(v) > 1 else f"n={len(v)}"


def comparison(label: str, a: np.ndarray, b: np.ndarray) -> str:
    """A table row: mean ± std of each side, Welch's t (its df) and two-sided p."""
    from scipy import stats  # jax's dependency
    w = stats.ttest_ind(a, b, equal_var=False) if min(len(a), len(b)) > 1 else None
    test = f"{w.statistic:.2f} ({w.df:.1f}) | {w.pvalue:.2f}" if w is not None else "– | –"
    return f"| {label} | {mean_std(a)} | {mean_std(b)} | {test} |"


def report(args, seeds, jax_acc, tf_acc, n_train, n_test, env, seconds) -> str:
    ok_jax, ok_tf = jax_acc >= COLLAPSED_BELOW, tf_acc >= COLLAPSED_BELOW
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    return "\n".join([
        "# Fidelity: jaxmlp against the 2017 program, across seeds", "",
        f"{len(seeds)} seeds of each, {args.steps:,} steps of batch {B} on Fashion-MNIST "
        f"(`{TRAIN_SPLIT}`: {n_train:,} training images, `{TEST_SPLIT}`: {n_test:,} test images). "
        "Each side draws each seed's weights and data order its own way, sharing no random numbers: "
        "this compares distributions (the exact, step-by-step agreement from shared parameters and "
        "batches is `tests/test_seed_oracle.py`).", "",
        "| final test accuracy | jaxmlp (one ensemble run) | original (`tf.compat.v1` port) "
        "| Welch's t (df) | p |", "|---|---|---|---|---|",
        comparison("all seeds", jax_acc, tf_acc),
        *([comparison(f"runs that did not collapse (≥ {COLLAPSED_BELOW})", jax_acc[ok_jax], tf_acc[ok_tf])]
          if not (ok_jax.all() and ok_tf.all()) else []),
        "", f"Collapsed runs (final test accuracy below {COLLAPSED_BELOW}; chance is 0.1): jaxmlp "
        f"{int((~ok_jax).sum())} of {len(seeds)}, original {int((~ok_tf).sum())} of {len(seeds)}.", "",
        "| seed | jaxmlp test accuracy | original test accuracy |", "|---|---|---|",
        *[f"| {s} | {a:.4f} | {b:.4f} |" for s, a, b in zip(seeds, jax_acc, tf_acc)],
        "", "## How it was produced", "",
        f"- Command: `{command}` ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).",
        f"- jaxmlp: `Config(dataset=\"{DATASET}\", train_split=\"{TRAIN_SPLIT}\", steps={args.steps}, "
        f"seeds={tuple(seeds)})`, one `train_and_evaluate` call (every other field the seed "
        "experiment's: lr 0.3 on the batch-mean loss, the original's 0.003 on the sum).",
        "- Original: `scripts/fidelity.py:run_original`, the 2017 graph (`jaxmlp.bench.original.build`: "
        "`-reduce_sum(Y_ * log(Y + 1e-10))`, `GradientDescentOptimizer(0.003)`) in graph mode.",
        f"- Data: `jaxmlp.data.load` from TFDS (prepared from `{args.manual_dir}` if needed); both sides "
        "train on the same arrays; the original's images are its reader's, uint8 times 1/255 in float32.",
        f"- Machine and versions: {os.cpu_count()} logical CPUs, {env['platform']}; Python {env['python']}, "
        f"jax {env['jax']} ({env['backend']}), tensorflow {env['tensorflow']}.",
        f"- Wall time: jaxmlp {seconds['jax']:.0f} s (all {len(seeds)} seeds, compile included), "
        f"original {seconds['tf']:.0f} s ({seconds['tf'] / len(seeds):.0f} s per seed).", ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="TFDS data dir (default: TFDS's)")
    p.add_argument("--manual-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the four Fashion-MNIST IDX .gz files (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7", help="comma-separated (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10_000, help="training steps (default: %(default)s)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "fidelity.md"),
                   help="the Markdown report to write (default: docs/fidelity.md)")
    args = p.parse_args(argv)
    from jaxmlp import data, records, run
    from jaxmlp.config import Config, ConfigError

    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        config = Config(dataset=DATASET, train_split=TRAIN_SPLIT, test_split=TEST_SPLIT,
                        steps=args.steps, seeds=seeds, log_every=args.steps)
    except (ConfigError, ValueError) as e:
        p.error(str(e))
    ds = data.load(DATASET, data_dir=args.data_dir, manual_dir=args.manual_dir, train_split=TRAIN_SPLIT,
                   test_split=TEST_SPLIT, progress=False)
    t0 = time.perf_counter()
    summary = run.train_and_evaluate(config, dataset=ds, quiet=True).summary
    jax_acc = np.array([m["final_test_accuracy"] for m in summary["members"]])
    seconds = {"jax": time.perf_counter() - t0}
    print(f"jaxmlp: {len(seeds)} seeds in {seconds['jax']:.0f} s: {mean_std(jax_acc)}", flush=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the CPU program, as on the 2017 laptops
    scale, onehot = np.float32(1 / 255), np.eye(10, dtype=np.float32)  # its reader's arrays
    train_x, test_x = ((x.astype(np.float32) * scale)[..., None] for x in (ds.train_images, ds.test_images))
    t0, tf_acc = time.perf_counter(), []
    for seed in seeds:
        tf_acc.append(run_original(tf, seed, args.steps, train_x, onehot[ds.train_labels], test_x,
                                   onehot[ds.test_labels]))
        print(f"original seed {seed}: test accuracy {tf_acc[-1]:.4f}", flush=True)
    seconds["tf"] = time.perf_counter() - t0
    env = {**records.environment(), "tensorflow": tf.__version__}
    text = report(args, seeds, jax_acc, np.array(tf_acc), len(ds.train_labels), len(ds.test_labels),
                  env, seconds)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
