"""Görner's 2017 five-layer ReLU program, ported to ``tf.compat.v1``: the baseline jaxmlp is timed against.

    python -m jaxmlp.bench.original ARRAYS.npz --steps 10000 --json out.json

As in the 2017 notebook: placeholders X [None, 28, 28, 1] and Y_ [None, 10];
784-200-100-60-30-10 with ReLU, weights ``truncated_normal(stddev=0.1)``, zero
biases; ``cross_entropy = -reduce_sum(Y_ * log(Y + 1e-10))`` over the batch;
``GradientDescentOptimizer(0.003)``; batches of 100 from a per-epoch shuffle.
Each step runs the train op, then ``sess.run([accuracy, cross_entropy])`` on
the same batch (after the update); the whole test set is scored at step 0 and
every 100 steps (jaxmlp's 101 evaluations). The arrays (an .npz of uint8 images
and integer labels: train_images, train_labels, test_images, test_labels) are
scaled to [0, 1] and one-hot encoded on the host once, as the original's
``input_data`` did. TensorFlow is imported only here, and this module imports
neither JAX nor the rest of jaxmlp. ``build`` is the one copy of the 2017 graph:
``tests/test_seed_oracle.py`` and ``scripts/fidelity.py`` build theirs with it too.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports: they count

import argparse
import json
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


def build(tf, seed: int | None = None, initial=None) -> dict:
    """The 2017 graph, in the default graph, written as the notebook writes it.

    Placeholders X [None, 28, 28, 1] and Y_ [None, 10]; W1..W5, B1..B5 either drawn
    as the original draws them (``truncated_normal(stddev=0.1)``, zero biases, under
    ``set_random_seed(seed)``) or set from ``initial`` (one (w, b) per layer);
    ``Y = softmax(Ylogits)``, ``cross_entropy = -reduce_sum(Y_ * log(Y + 1e-10))``
    over the batch, accuracy by argmax, ``GradientDescentOptimizer(0.003)``.
    Returns those tensors and ops, ``variables`` [W1, B1, ..., W5, B5] and, not in
    the original, ``p_true``: each image's probability of its true class.
    """
    tf1 = tf.compat.v1
    if seed is not None:
        tf1.set_random_seed(seed)
    X = tf1.placeholder(tf.float32, [None, 28, 28, 1])
    Y_ = tf1.placeholder(tf.float32, [None, 10])
    variables = []  # W1, B1, W2, B2, ...: created in the original's order (its draws depend on it)
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        w, bias = (None, None) if initial is None else initial[i]
        variables.append(tf1.Variable(tf1.truncated_normal([a, b], stddev=0.1) if w is None
                                      else np.asarray(w)))
        variables.append(tf1.Variable(tf.zeros([b]) if bias is None else np.asarray(bias)))
    W1, B1, W2, B2, W3, B3, W4, B4, W5, B5 = variables

    XX = tf.reshape(X, [-1, 784])
    Y1 = tf.nn.relu(tf.matmul(XX, W1) + B1)
    Y2 = tf.nn.relu(tf.matmul(Y1, W2) + B2)
    Y3 = tf.nn.relu(tf.matmul(Y2, W3) + B3)
    Y4 = tf.nn.relu(tf.matmul(Y3, W4) + B4)
    Ylogits = tf.matmul(Y4, W5) + B5
    Y = tf.nn.softmax(Ylogits)

    cross_entropy = -tf.reduce_sum(Y_ * tf1.log(Y + 1e-10))
    correct_prediction = tf.equal(tf.argmax(Y, 1), tf.argmax(Y_, 1))
    accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32))
    train_step = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(cross_entropy)
    return {"X": X, "Y_": Y_, "Y": Y, "cross_entropy": cross_entropy, "accuracy": accuracy,
            "train_step": train_step, "variables": variables,
            "p_true": tf.reduce_sum(Y_ * Y, 1)}


def train(tf, train_xy, test_xy, *, steps: int, seed: int = 0) -> dict:
    """Run the 2017 loop for ``steps`` steps; returns timings (s) and test accuracy per evaluation.

    ``run_seconds``: from building the graph to closing the session (set-up, training, evaluation)."""
    t0 = time.perf_counter()
    graph = tf.Graph()
    with graph.as_default():
        g = build(tf, seed=seed)
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
        sess.run([g["accuracy"], g["cross_entropy"]], batch)  # the 2017 loop reads these each step
        train_s += time.perf_counter() - t
        if (step + 1) % EVAL_EVERY == 0:
            eval_s += evaluate()
    sess.close()
    return {"run_seconds": time.perf_counter() - t0, "setup_seconds": setup,
            "train_seconds": train_s, "eval_seconds": eval_s,
            "final_test_accuracy": test_accuracy[-1],
            "final_test_loss": test_cross_entropy[-1] / len(test_xy[0]),  # per image, as jaxmlp's
            "test_accuracy": test_accuracy}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxmlp.bench.original", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arrays", help="an .npz with train_images, train_labels, test_images, test_labels")
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write timings and accuracy as JSON")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    import tensorflow as tf  # only here: nothing else in jaxmlp.bench needs it

    imported = time.perf_counter()
    with np.load(args.arrays) as f:
        train_xy = host_arrays(f["train_images"], f["train_labels"])
        test_xy = host_arrays(f["test_images"], f["test_labels"])
    loaded = time.perf_counter()
    result = {"program": "Görner 2017, tf.compat.v1", "tensorflow": tf.__version__,
              "steps": args.steps, "batch_size": BATCH_SIZE, "eval_every": EVAL_EVERY,
              "import_seconds": imported - t0, "data_seconds": loaded - imported,
              **train(tf, train_xy, test_xy, steps=args.steps, seed=args.seed)}
    result["process_seconds"] = time.perf_counter() - _STARTED
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
