"""Görner's 2017 five-layer ReLU program, ported to ``tf.compat.v1``: the baseline jaxmlp is timed against.

    python -m jaxmlp.bench.original --dataset fashion_mnist --data-dir D --manual-dir M \\
        --steps 10000 --json out.json

As in the 2017 notebook: placeholders X [None, 28, 28, 1] and Y_ [None, 10];
784-200-100-60-30-10 with ReLU, weights ``truncated_normal(stddev=0.1)``, zero
biases; ``cross_entropy = -reduce_sum(Y_ * log(Y + 1e-10))`` over the batch;
``GradientDescentOptimizer(0.003)``; batches of 100 from a per-epoch shuffle.
Each step runs the train op, then ``sess.run([accuracy, cross_entropy])`` on
the same batch (after the update); the whole test set is scored at step 0 and
every 100 steps (jaxmlp's 101 evaluations). The arrays are jaxmlp's
(``jaxmlp.data.load``), scaled to [0, 1] and one-hot encoded on the host once,
as the original's ``input_data`` did. TensorFlow is imported only here.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: they count

import argparse
import sys

import numpy as np

SIZES = (784, 200, 100, 60, 30, 10)
LEARNING_RATE = 0.003  # on the batch-summed cross-entropy
BATCH_SIZE = 100
EVAL_EVERY = 100


def host_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28) and int labels -> float32 (N, 28, 28, 1) in [0, 1] and one-hot (N, 10)."""
    x = images.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return x, np.eye(10, dtype=np.float32)[labels]


def build(tf, seed: int) -> dict:
    """The 2017 graph in the default graph: placeholders, train op, accuracy, cross-entropy."""
    v1 = tf.compat.v1
    v1.set_random_seed(seed)
    X = v1.placeholder(tf.float32, [None, 28, 28, 1])
    Y_ = v1.placeholder(tf.float32, [None, 10])
    weights = [v1.Variable(v1.truncated_normal([a, b], stddev=0.1)) for a, b in zip(SIZES[:-1], SIZES[1:])]
    biases = [v1.Variable(v1.zeros([b])) for b in SIZES[1:]]
    Y = v1.reshape(X, [-1, SIZES[0]])
    for W, B in zip(weights[:-1], biases[:-1]):
        Y = v1.nn.relu(v1.matmul(Y, W) + B)
    Y = v1.nn.softmax(v1.matmul(Y, weights[-1]) + biases[-1])
    cross_entropy = -v1.reduce_sum(Y_ * v1.log(Y + 1e-10))
    correct = v1.equal(v1.argmax(Y, 1), v1.argmax(Y_, 1))
    accuracy = v1.reduce_mean(v1.cast(correct, tf.float32))
    train_step = v1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(cross_entropy)
    return {"X": X, "Y_": Y_, "train_step": train_step, "accuracy": accuracy,
            "cross_entropy": cross_entropy}


def train(tf, train_xy, test_xy, *, steps: int, seed: int = 0) -> dict:
    """Run the 2017 loop for ``steps`` steps; returns timings (s) and test accuracy per evaluation."""
    t0 = time.perf_counter()
    graph = tf.Graph()
    with graph.as_default():
        g = build(tf, seed)
        init = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    setup = time.perf_counter() - t0
    images, labels = train_xy
    test = {g["X"]: test_xy[0], g["Y_"]: test_xy[1]}
    rng = np.random.default_rng(seed)
    per_epoch = len(images) // BATCH_SIZE
    test_accuracy, test_cross_entropy, train_s, eval_s = [], [], 0.0, 0.0

    def evaluate():
        t = time.perf_counter()
        a, c = sess.run([g["accuracy"], g["cross_entropy"]], test)
        test_accuracy.append(float(a))
        test_cross_entropy.append(float(c))
        return time.perf_counter() - t

    eval_s += evaluate()
    for step in range(steps):
        t = time.perf_counter()
        if step % per_epoch == 0:  # input_data reshuffles the whole arrays each epoch
            perm = rng.permutation(len(images))
            epoch_x, epoch_y = images[perm], labels[perm]
        i = (step % per_epoch) * BATCH_SIZE
        batch = {g["X"]: epoch_x[i:i + BATCH_SIZE], g["Y_"]: epoch_y[i:i + BATCH_SIZE]}
        sess.run(g["train_step"], batch)
        train_accuracy, train_cross_entropy = sess.run([g["accuracy"], g["cross_entropy"]], batch)
        train_s += time.perf_counter() - t
        if (step + 1) % EVAL_EVERY == 0:
            eval_s += evaluate()
    sess.close()
    return {"setup_seconds": setup, "train_seconds": train_s, "eval_seconds": eval_s,
            "final_test_accuracy": test_accuracy[-1],
            "final_test_loss": test_cross_entropy[-1] / len(test_xy[0]),  # per image, as jaxmlp's
            "final_train_accuracy": float(train_accuracy) if steps else None,
            "final_train_cross_entropy": float(train_cross_entropy) if steps else None,
            "test_accuracy": test_accuracy}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxmlp.bench.original", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", help="TFDS data dir (jaxmlp's decoded-array cache is read from it)")
    p.add_argument("--manual-dir", help="IDX files, if the dataset is not prepared yet")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write timings and accuracy as JSON")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    import tensorflow as tf  # only here: nothing else in jaxmlp.bench needs it

    imported = time.perf_counter()
    from jaxmlp import data, records

    d = data.load(args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir, progress=False)
    train_xy, test_xy = host_arrays(d.train_images, d.train_labels), host_arrays(d.test_images, d.test_labels)
    loaded = time.perf_counter()
    result = {"program": "Görner 2017, tf.compat.v1", "tensorflow": tf.__version__,
              "dataset": args.dataset, "data_source": d.source, "steps": args.steps,
              "batch_size": BATCH_SIZE, "eval_every": EVAL_EVERY,
              "import_seconds": imported - t0, "data_seconds": loaded - imported,
              **train(tf, train_xy, test_xy, steps=args.steps, seed=args.seed)}
    result["total_seconds"] = time.perf_counter() - _STARTED
    if args.json:
        records.atomic_write_json(args.json, result)
    print(f"original (TF {tf.__version__}): {args.steps} steps in {result['total_seconds']:.1f} s "
          f"(train {result['train_seconds']:.1f} s, eval {result['eval_seconds']:.1f} s); "
          f"final test accuracy {result['final_test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
