"""Agreement across seeds on real data: jaxmlp against the 2017 program, on Fashion-MNIST.

    python scripts/fidelity.py --data-dir /tmp/tfds --manual-dir /usr/share/datasets/fashion-mnist
    python scripts/fidelity.py --data-dir /tmp/tfds --steps 200 --seeds 0,1 --out /tmp/f.md  # try

Trains jaxmlp once as an ensemble of one model per seed
(``Config(dataset="fashion_mnist", train_split="train[5000:]", train_metrics="after",
seeds=...)``), then the original program ported to ``tf.compat.v1`` once per
seed, each with its own ``tf.set_random_seed`` (its truncated-normal draw) and
its own numpy shuffle, on the same 55,000 training and 10,000 test images, with
metrics read after each update as the original does. Writes a Markdown report
(default ``docs/fidelity.md``): final test accuracy and cross-entropy per seed,
mean ± std per side and Welch's t-test, over all seeds and over the runs that
did not collapse; for each collapsed original run, where it blew up, how much of
the test set then sits in the capped-loss regime (p_true < 1e-10), and whether
jaxmlp's loss recovers from the same state; and how the numbers were produced.
Takes minutes on a CPU; not run in CI (``tests/test_seed_oracle.py`` is the
fast, exact check).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from importlib import metadata

import numpy as np

DATASET = "fashion_mnist"
TRAIN_SPLIT = "train[5000:]"  # the original's input_data holds the first 5,000 out as validation
TEST_SPLIT = "test"
B = 100
LR_ORIGINAL = 0.003  # GradientDescentOptimizer on the loss summed over the batch
EVAL_EVERY = 100  # the original scores the whole test set every 100 steps
CHANCE = 0.1
COLLAPSED_BELOW = 0.2  # final test accuracy under this (chance is 0.1): the run collapsed
BLOW_UP_LOSS = 10.0  # a post-update minibatch cross-entropy per image above this: a blow-up
RECOVERY_STEPS = 1000  # steps a collapsed original run is continued with the stable loss


# --- the original program, ported to tf.compat.v1 ------------------------------------------------

def run_original(tf, seed: int, steps: int, train_x, train_y, test_x, test_y) -> dict:
    """Görner's five-layer ReLU program for ``steps`` steps; returns its read-outs.

    As the original: W ~ truncated_normal(stddev=0.1), B = 0, drawn under
    ``tf.set_random_seed(seed)``; ``next_batch(100)`` as its ``mnist_data.py``:
    the first epoch in the data's order, then a numpy shuffle at each epoch
    end (there from the unseeded global RNG; here from ``seed``, to be
    repeatable); ``sess.run(train_step)`` then ``sess.run([accuracy,
    cross_entropy])`` on the same batch; the whole test set every 100 steps.
    Images: (N, 28, 28, 1) float32 in [0, 1]; labels one-hot float32.
    """
    from jaxmlp.bench.original import build

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        g = build(tf, seed=seed)
        init = tf1.global_variables_initializer()
    X, Y_, accuracy, cross_entropy = g["X"], g["Y_"], g["accuracy"], g["cross_entropy"]

    shuffle = np.random.RandomState(seed)
    n = len(train_x)
    per_epoch = n // B
    order = np.arange(n)  # the first epoch is not shuffled
    train_loss, train_acc, test_steps, test_acc, test_loss = [], [], [], [], []
    batches, blow_up = [], None
    with tf1.Session(graph=graph) as sess:
        sess.run(init)
        for i in range(steps):
            if i and i % per_epoch == 0:  # "Finished epoch ... Shuffle the data"
                order = shuffle.permutation(n)
            idx = order[(i % per_epoch) * B:(i % per_epoch + 1) * B]
            batches.append(idx)
            feed = {X: train_x[idx], Y_: train_y[idx]}
            sess.run(g["train_step"], feed)
            a, c = sess.run([accuracy, cross_entropy], feed)  # post-update, as the original
            train_acc.append(a)
            train_loss.append(c / B)  # per image, as jaxmlp records it
            if blow_up is None and not c / B <= BLOW_UP_LOSS:
                blow_up = {"step": i + 1, "loss": c / B, "params": sess.run(g["variables"])}
            if (i + 1) % EVAL_EVERY == 0:
                a, c = sess.run([accuracy, cross_entropy], {X: test_x, Y_: test_y})
                test_steps.append(i + 1)
                test_acc.append(a)
                test_loss.append(c / len(test_x))
        capped = float(np.mean(sess.run(g["p_true"], {X: test_x, Y_: test_y}) < 1e-10))
    out = {"train_loss": np.asarray(train_loss), "train_accuracy": np.asarray(train_acc),
           "test_step": np.asarray(test_steps), "test_accuracy": np.asarray(test_acc),
           "test_loss": np.asarray(test_loss), "test_capped_fraction": capped, "blow_up": blow_up}
    if blow_up is not None:
        after = batches[blow_up["step"]:blow_up["step"] + RECOVERY_STEPS]
        out["recovery"] = continue_stable(tf, blow_up["params"], after, train_x, train_y,
                                          test_x, test_y)
    return out


def continue_stable(tf, params, batches, train_x, train_y, test_x, test_y) -> dict:
    """From ``params`` (the original's state after a blow-up), the original's next batches
    with jaxmlp's loss instead: the stable log-softmax cross-entropy (summed, lr 0.003)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        X = tf1.placeholder(tf.float32, [None, 28, 28, 1])
        Y_ = tf1.placeholder(tf.float32, [None, 10])
        v = [tf1.Variable(p) for p in params]
        h = tf.reshape(X, [-1, 784])
        for W, b in zip(v[0:8:2], v[1:8:2]):
            h = tf.nn.relu(tf.matmul(h, W) + b)
        logits = tf.matmul(h, v[8]) + v[9]
        loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=Y_, logits=logits))
        correct = tf.equal(tf.argmax(logits, 1), tf.argmax(Y_, 1))
        accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
        step = tf1.train.GradientDescentOptimizer(LR_ORIGINAL).minimize(loss)
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as sess:
        sess.run(init)
        for idx in batches:
            sess.run(step, {X: train_x[idx], Y_: train_y[idx]})
        a, c = sess.run([accuracy, loss], {X: test_x, Y_: test_y})
    return {"steps": len(batches), "test_accuracy": float(a), "test_loss": float(c) / len(test_x)}


# --- statistics --------------------------------------------------------------------------------

def welch(a, b) -> dict:
    """Welch's t-test of mean(a) == mean(b): t, Welch-Satterthwaite df, two-sided p."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # every run identical on both sides
        return {"t": math.nan, "df": math.nan, "p": 1.0 if a.mean() == b.mean() else 0.0}
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return {"t": t, "df": df, "p": t_two_sided_p(t, df)}


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (no scipy).

    1 - 2 * integral of the density from 0 to |t|, by Simpson's rule on 20,000
    intervals: the density is smooth, so the error is far below the digits shown.
    """
    x = np.linspace(0.0, abs(t), 20_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    integral = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    return float(min(1.0, max(0.0, 1.0 - 2.0 * integral)))


def mean_std(v) -> str:
    v = np.asarray(v, np.float64)
    if len(v) == 0:
        return "–"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def collapsed(side: dict) -> np.ndarray:
    """Which runs collapsed: a non-finite loss, or a final test accuracy near chance."""
    acc = np.asarray(side["test_accuracy"], np.float64)
    return ~np.isfinite(acc) | ~np.isfinite(side["test_loss"]) | (acc < COLLAPSED_BELOW)


def comparison_rows(label: str, jax_side: dict, tf_side: dict, keep_jax, keep_tf) -> list[str]:
    rows = []
    for metric, name in (("test_accuracy", "final test accuracy"),
                         ("test_loss", "final test cross-entropy (per image)")):
        a, b = jax_side[metric][keep_jax], tf_side[metric][keep_tf]
        w = welch(a, b) if min(len(a), len(b)) > 1 else None
        test = f"{w['t']:.2f} ({w['df']:.1f}) | {w['p']:.2f}" if w else "– | –"
        rows.append(f"| {name}, {label} | {mean_std(a)} (n={len(a)}) | {mean_std(b)} (n={len(b)}) "
                    f"| {test} |")
    return rows


# --- the record ----------------------------------------------------------------------------------

def held_out_overlap(manual_dir: str, first_of_tfds_train: np.ndarray) -> int:
    """How many of the IDX file's first 5,000 training images are among TFDS's first 5,000."""
    from jaxmlp import idx

    images, _ = idx.read_dir(manual_dir)["train"]
    key = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}
    return len(key(images[:5000]) & key(first_of_tfds_train))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.platform()}"


def versions() -> str:
    names = ("jax", "jaxlib", "flax", "optax", "numpy", "tensorflow", "tensorflow-cpu",
             "tensorflow-datasets")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


def report(args, seeds, jax_side, tf_side, tf_runs, timings, overlap, n_train, n_test, env) -> str:
    bad_jax, bad_tf = collapsed(jax_side), collapsed(tf_side)
    everyone = np.ones(len(seeds), bool)
    rows = ["| | jaxmlp (one ensemble run) | original (`tf.compat.v1` port) | Welch's t (df) | p |",
            "|---|---|---|---|---|"]
    rows += comparison_rows("all seeds", jax_side, tf_side, everyone, everyone)
    if bad_jax.any() or bad_tf.any():
        rows += comparison_rows("runs that did not collapse", jax_side, tf_side, ~bad_jax, ~bad_tf)
    rows.append(f"| training cross-entropy, mean of the last 100 steps (per image), runs that did "
                f"not collapse | {mean_std(jax_side['late_train_loss'][~bad_jax])} | "
                f"{mean_std(tf_side['late_train_loss'][~bad_tf])} | | |")
    kept_jax, kept_tf = jax_side["test_accuracy"][~bad_jax], tf_side["test_accuracy"][~bad_tf]
    acc = welch(kept_jax, kept_tf) if min(len(kept_jax), len(kept_tf)) > 1 else None
    verdict = ("too few runs left to compare" if acc is None else
               f"{'no significant difference' if acc['p'] >= 0.05 else 'a significant difference'} "
               f"at the 5% level (p = {acc['p']:.2f}; difference of means "
               f"{kept_jax.mean() - kept_tf.mean():+.4f})")
    collapse_lines = [
        f"Collapsed runs (final test accuracy below {COLLAPSED_BELOW}, chance being {CHANCE}, or a "
        f"non-finite loss): jaxmlp {int(bad_jax.sum())} of {len(seeds)}, original "
        f"{int(bad_tf.sum())} of {len(seeds)}."]
    for seed, run, bad in zip(seeds, tf_runs, bad_tf):
        if not bad:
            continue
        line = f"Original seed {seed}: "
        if run["blow_up"] is not None:
            line += (f"first blew up at step {run['blow_up']['step']:,} (minibatch cross-entropy "
                     f"{run['blow_up']['loss']:.1f} per image right after that update); ")
        line += (f"at the end {run['test_capped_fraction']:.0%} of the test images have "
                 f"p_true < 1e-10, where the original's loss is capped at -log(1e-10) = 23.03 and "
                 f"its gradient vanishes.")
        if "recovery" in run:
            r = run["recovery"]
            recovered = math.isfinite(r["test_loss"]) and r["test_accuracy"] >= COLLAPSED_BELOW
            outcome = (f"test accuracy {r['test_accuracy']:.4f}" if math.isfinite(r["test_loss"])
                       else "a non-finite loss (jaxmlp would report it as diverged)")
            line += (f" Continued from the state right after the blow-up for {r['steps']:,} of the "
                     f"same batches with jaxmlp's loss (stable log-softmax) instead, it ends with "
                     f"{outcome}: ")
            line += ("so here the 1e-10 is what keeps the original stuck." if recovered else
                     "it does not recover either, so the blow-up comes from the learning rate; "
                     "the 1e-10 only decides how the run fails after it.")
        collapse_lines.append(line)
    per_seed = ["| seed | jaxmlp test accuracy | original test accuracy |", "|---|---|---|"]
    per_seed += [f"| {s} | {a:.4f} | {b:.4f} |"
                 for s, a, b in zip(seeds, jax_side["test_accuracy"], tf_side["test_accuracy"])]
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    now = datetime.datetime.now(datetime.timezone.utc)
    steps = args.steps
    return "\n".join([
        "# Fidelity: jaxmlp against the 2017 program, across seeds",
        "",
        f"{len(seeds)} seeds of each, {steps:,} steps of batch {B} on Fashion-MNIST "
        f"(`{TRAIN_SPLIT}`: {n_train:,} training images, `{TEST_SPLIT}`: {n_test:,} test "
        f"images), minibatch metrics read after each update on both sides. Per seed, "
        f"the original draws its own truncated-normal weights (`tf.set_random_seed`) and "
        f"its own numpy shuffles (from the second epoch; the first is in data order, as "
        f"its reader does); jaxmlp draws both from the seed's JAX key, so the two sides "
        f"share no random numbers: this compares the distributions of outcomes. (The "
        f"exact, step-by-step agreement from shared parameters and batches is "
        f"`tests/test_seed_oracle.py`.)",
        "",
        *rows,
        "",
        f"Final test accuracy of the runs that did not collapse: {verdict}.",
        "",
        *[line + "\n" for line in collapse_lines],
        *per_seed,
        "",
        "## How it was produced",
        "",
        f"- Command: `{command}` ({now:%Y-%m-%d %H:%M} UTC)",
        f"- jaxmlp: `Config(dataset=\"{DATASET}\", train_split=\"{TRAIN_SPLIT}\", "
        f"train_metrics=\"after\", steps={steps}, seeds={tuple(seeds)})`, one "
        f"`train_and_evaluate` call (every other field default: lr 0.3 on the batch-mean "
        f"loss, i.e. the original's 0.003 on the sum); backend {env['jax_backend']}.",
        f"- Original: `scripts/fidelity.py:run_original`, the 2017 graph "
        f"(`jaxmlp.bench.original.build`) in `tf.compat.v1` "
        f"graph mode (`-reduce_sum(Y_ * log(Y + 1e-10))`, `GradientDescentOptimizer(0.003)`), "
        f"test set scored every {EVAL_EVERY} steps; `TF_ENABLE_ONEDNN_OPTS="
        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset)')}`.",
        f"- Data: the Debian IDX files in `{args.manual_dir}`, prepared through TFDS by "
        f"`jaxmlp.data.load`; both sides train on the same arrays, in TFDS's example order. "
        f"Of the IDX file's first 5,000 training images, {overlap:,} are among TFDS's first "
        f"5,000 of `train`, so `{TRAIN_SPLIT}` holds out different images than the "
        f"original's reader did (the same number of them).",
        f"- Machine: {machine()}; load average {env['load_start']:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (a shared machine: the wall times are "
        f"upper bounds).",
        f"- Versions: {versions()}.",
        f"- Wall time: jaxmlp {timings['jax']:.0f} s (all {len(seeds)} seeds, compile "
        f"included), original {timings['tf']:.0f} s ({timings['tf'] / len(seeds):.0f} s per "
        f"seed), {timings['total']:.0f} s in all.",
        "",
    ])


# --- main ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="TFDS data dir (prepared there if needed)")
    p.add_argument("--manual-dir", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the four Fashion-MNIST IDX .gz files (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7",
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10_000,
                   help="training steps (default: %(default)s)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs",
                                                 "fidelity.md"),
                   help="the Markdown report to write (default: docs/fidelity.md)")
    args = p.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    if len(seeds) < 2 or args.steps % EVAL_EVERY:
        p.error(f"need at least 2 seeds and --steps a multiple of {EVAL_EVERY}")
    started = time.perf_counter()
    env = {"load_start": os.getloadavg()[0]}

    from jaxmlp import data
    from jaxmlp.config import Config
    from jaxmlp.run import train_and_evaluate

    ds = data.load(DATASET, data_dir=args.data_dir, manual_dir=args.manual_dir,
                   train_split=TRAIN_SPLIT, test_split=TEST_SPLIT, progress=False)
    whole_train = data.load(DATASET, data_dir=args.data_dir, progress=False).train_images
    overlap = held_out_overlap(args.manual_dir, whole_train[:5000])

    config = Config(dataset=DATASET, data_dir=args.data_dir, manual_dir=args.manual_dir,
                    train_split=TRAIN_SPLIT, test_split=TEST_SPLIT, train_metrics="after",
                    steps=args.steps, seeds=seeds, log_every=args.steps)
    t0 = time.perf_counter()
    result = train_and_evaluate(config, quiet=True)
    jax_s = time.perf_counter() - t0
    h = result.history
    jax_side = {"test_accuracy": np.asarray(h["test_accuracy"])[:, -1],
                "test_loss": np.asarray(h["test_loss"])[:, -1],
                "late_train_loss": np.asarray(h["train_loss"])[:, -100:].mean(1)}
    import jax

    env["jax_backend"] = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    print(f"jaxmlp: {len(seeds)} seeds in {jax_s:.0f} s; test accuracy "
          f"{mean_std(jax_side['test_accuracy'])}", flush=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the CPU program, as on the 2017 laptops
    scale = np.float32(1.0 / 255.0)  # input_data's float32 images in [0, 1]
    train_x = (ds.train_images.astype(np.float32) * scale)[..., None]
    test_x = (ds.test_images.astype(np.float32) * scale)[..., None]
    onehot = lambda y: np.eye(10, dtype=np.float32)[y]
    train_y, test_y = onehot(ds.train_labels), onehot(ds.test_labels)
    t0 = time.perf_counter()
    runs = []
    for seed in seeds:
        s0 = time.perf_counter()
        runs.append(run_original(tf, seed, args.steps, train_x, train_y, test_x, test_y))
        print(f"original seed {seed}: test accuracy {runs[-1]['test_accuracy'][-1]:.4f} "
              f"({time.perf_counter() - s0:.0f} s)", flush=True)
    tf_s = time.perf_counter() - t0
    tf_side = {"test_accuracy": np.array([r["test_accuracy"][-1] for r in runs]),
               "test_loss": np.array([r["test_loss"][-1] for r in runs]),
               "late_train_loss": np.array([r["train_loss"][-100:].mean() for r in runs])}

    timings = {"jax": jax_s, "tf": tf_s, "total": time.perf_counter() - started}
    text = report(args, seeds, jax_side, tf_side, runs, timings, overlap, len(ds.train_labels),
                  len(ds.test_labels), env)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
