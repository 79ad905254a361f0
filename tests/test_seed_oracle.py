"""The 2017 program as an oracle: Görner's graph, rebuilt with ``tf.compat.v1``,
fed the same parameters and batches as jaxmlp.

The graph is ``jaxmlp.bench.original.build`` (the benchmark's and
``scripts/fidelity.py``'s too), written as the original writes it (placeholders
X, Y_; W1..W5, B1..B5; ``-reduce_sum(Y_ * log(Y + 1e-10))``;
``GradientDescentOptimizer(0.003)``), with its variables set from jaxmlp's
parameters instead of its own truncated-normal draws, so both sides start
equal. The data are learnable synthetic digits made here, uint8 as data holds them:
jaxmlp's MLP scales them itself (times 1/255 in float32) and the original is fed the
float32 images in [0, 1] its ``input_data`` made the same way. Checks:

* the first layer sees the same numbers on both sides;
* one update from the same parameters agrees to float32 rounding, at several
  points of a real jaxmlp trajectory (so neither chaos over many steps nor a
  lucky start can hide or fake a difference), and plausible wrong
  implementations fail the same check;
* 50 consecutive steps give the same per-step losses;
* ``metrics="after"`` records what the original's post-update
  ``sess.run([accuracy, cross_entropy])`` reports; ``"before"`` does not;
* test-set accuracy and cross-entropy agree;
* the ``+ 1e-10`` inside the original's log is a real difference only for an
  image with p_true < 1e-10, which no image here comes near.

TensorFlow runs in graph mode inside its own ``tf.Graph`` (never
``disable_eager_execution``), so nothing leaks into other tests. Importing
TensorFlow alone takes seconds, so the module is in the slow suite.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmlp import loop
from jaxmlp.bench.original import build as build_original
from jaxmlp.config import Config
from jaxmlp.model import MLP, layer_params
from jaxmlp.train import evaluate, train_step

pytestmark = pytest.mark.slow

B = 100  # the original's batch
EPS_LOG = 1e-10  # the original's guard inside the log
CHECK_STEPS = (0, 100, 1000, 3000)  # points of the jaxmlp trajectory where one update is compared
N_TRAIN, N_TEST = 20_000, 2_000

# Tolerances. float32 spacing is 1.2e-7 relative; TF (Eigen/oneDNN) and XLA sum the
# matmuls and the 100 per-image gradient terms in different orders and use different
# exp/log approximations, so the two sides differ by a few ulps, never more.
# Parameters after one update: 1e-6 relative (~8 ulps). Entries near zero (biases start
# at exactly 0, weights cross it) have no relative precision: there the difference is the
# rounding of the update lr * (sum of 100 terms), a few ulps at the weights' typical scale
# (~0.1, spacing 7.5e-9), hence the absolute 1e-7. Measured: the worst entry uses < 10% of
# this; the mistakes below exceed it by > 1e4 times.
PARAM_RTOL, PARAM_ATOL = 1e-6, 1e-7
# A minibatch's mean cross-entropy: the original's float32 sum of 100 logs of rounded
# probabilities (each log off by ~1 ulp of p, i.e. ~6e-8 absolute near p = 1) divided by
# 100, against jaxmlp's log-softmax mean. 1e-5 relative plus 1e-6 absolute covers a few
# ulps of every term (measured: < 5% of it is used); one SGD step, the difference between
# the metrics' timings, is > 500 times larger.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
# Per-step loss over 50 unsynchronised steps. Rounding differences grow along a
# trajectory (ReLU units flip, SGD amplifies): from step 0 on these data they stay below
# 1e-6 for 50 steps and first pass 1e-4 after 77 steps or more (seeds 0-2).
TRAJECTORY_RTOL = 1e-4


# --- data: learnable synthetic digits ----------------------------------------------------------

def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n MNIST-like images (n, 28, 28) uint8 (dark background, ~13% ink) and labels (n,) int32.

    Each class is four pen strokes (the same for every seed); each image jitters their
    ends by ~2 px, shifts them by up to 2 px, and half the images gain a stroke of a
    random class, so the classes overlap (~90% test accuracy after 3,000 steps).
    """
    # Stroke ends, (class, stroke, end, row/col), shared by every seed.
    ends = np.random.default_rng(2017).uniform(4, 22, (10, 4, 2, 2))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    strokes = ends[labels] + rng.normal(0, 2.0, (n, 4, 2, 2)) + rng.integers(-2, 3, (n, 1, 1, 2))
    extra = ends[rng.integers(0, 10, n), rng.integers(0, 4, n)]  # (n, 2, 2)
    extra = np.where((rng.random(n) < 0.5)[:, None, None], extra, strokes[:, 0])  # else redraw one
    strokes = np.concatenate([strokes, extra[:, None]], 1)  # (n, 5, 2, 2)
    t = np.linspace(0, 1, 30)[:, None]
    points = strokes[:, :, 0, None] * (1 - t) + strokes[:, :, 1, None] * t  # (n, 5, 30, 2)
    points = np.clip(np.round(points).astype(int), 0, 26).reshape(n, -1, 2)
    ink = np.repeat(rng.uniform(0.5, 1.0, n), points.shape[1])
    images = np.zeros(n * 784)
    at = np.repeat(np.arange(n) * 784, points.shape[1]) + points[..., 0].ravel() * 28 + points[..., 1].ravel()
    for offset in (0, 1, 28, 29):  # a 2x2 pen
        images[at + offset] = ink
    images = images.reshape(n, 28, 28)
    noise, inked = rng.normal(0, 0.1, images.shape), images > 0
    images[inked] = np.clip(images[inked] + noise[inked], 0, 1)
    return np.round(images * 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def digits():
    train, test = synthetic_digits(N_TRAIN, seed=0), synthetic_digits(N_TEST, seed=1)
    return {"train": train, "test": test}


@functools.lru_cache(maxsize=2)
def epoch_order(epoch: int) -> np.ndarray:
    return np.random.default_rng(epoch).permutation(N_TRAIN)


def batch_indices(step: int) -> np.ndarray:
    """The examples of step ``step``: a fresh numpy permutation per epoch."""
    per_epoch = N_TRAIN // B
    i = step % per_epoch
    return epoch_order(step // per_epoch)[i * B:(i + 1) * B]


def batch(digits, step: int) -> dict:
    images, labels = digits["train"]
    idx = batch_indices(step)
    return {"image": images[idx], "label": labels[idx]}


# --- the original program ----------------------------------------------------------------------

def to_original_inputs(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the original's ``input_data`` hands the graph: float32 images in [0, 1] shaped
    (N, 28, 28, 1) (``numpy.multiply(images, 1.0 / 255.0)`` on float32: uint8 times 1/255
    in float32) and one-hot labels."""
    x = (images.astype(np.float32) * np.float32(1.0 / 255.0))[..., None]
    return x, np.eye(10, dtype=np.float32)[labels]


class Original:
    """Görner's five-layer ReLU network and its training step, as ``tf.compat.v1`` code."""

    def __init__(self, tf, layers):
        tf1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            # The original draws W ~ truncated_normal(stddev=0.1), B = 0; here jaxmlp's draw.
            g = build_original(tf, initial=[(np.asarray(w), np.asarray(b)) for w, b in layers])
            # Not in the original: a way to set the variables.
            self.variables = g["variables"]
            self._values = [tf1.placeholder(tf.float32, v.shape) for v in self.variables]
            self._assign = tf.group(*[v.assign(p) for v, p in zip(self.variables, self._values)])
            init = tf1.global_variables_initializer()
        self.X, self.Y_, self.p_true = g["X"], g["Y_"], g["p_true"]
        self.cross_entropy, self.accuracy, self.train_step = (
            g["cross_entropy"], g["accuracy"], g["train_step"])
        config = tf1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1,
                                 device_count={"GPU": 0})
        self.sess = tf1.Session(graph=self.graph, config=config)
        self.sess.run(init)

    def feed(self, images, labels):
        x, y = to_original_inputs(images, labels)
        return {self.X: x, self.Y_: y}

    def set_params(self, layers):
        flat = [np.asarray(a, np.float32) for wb in layers for a in wb]
        self.sess.run(self._assign, dict(zip(self._values, flat)))

    def params(self) -> list[np.ndarray]:
        return self.sess.run(self.variables)

    def metrics(self, images, labels) -> tuple[float, float, np.ndarray]:
        """(accuracy, cross_entropy summed over the images, p_true per image)."""
        return tuple(self.sess.run([self.accuracy, self.cross_entropy, self.p_true],
                                   self.feed(images, labels)))

    def update(self, images, labels):
        self.sess.run(self.train_step, self.feed(images, labels))


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised elsewhere; the session hides GPUs anyway
        pass
    return tf


@pytest.fixture(scope="module")
def trajectory(digits):
    """{step: jaxmlp state after that many steps} for each of CHECK_STEPS: one run of the seed
    experiment's MLP from seed 0, fused in chunks of 100 steps as jaxmlp trains
    (``loop.run_steps``), on the batches ``batch`` gives."""
    state = loop.mlp_init(Config())(jax.random.key(0))
    (images, labels), test = digits["train"], digits["test"]
    data = loop.Data(*map(jnp.asarray, (images, labels, *test)))
    epochs = -(-CHECK_STEPS[-1] // (N_TRAIN // B))
    orders = jnp.asarray(np.stack([epoch_order(e) for e in range(epochs)]), jnp.int32)
    fused, ours = loop.batch_at(data, orders, jnp.int32(1234), B), batch(digits, 1234)
    assert all(np.array_equal(fused[k], ours[k]) for k in ours)  # the same batches
    saved = {0: state}
    for step in range(100, CHECK_STEPS[-1] + 1, 100):
        state, _ = loop.run_steps(state, data, orders, num_steps=100, batch_size=B)
        if step in CHECK_STEPS:
            saved[step] = state
    return saved


@pytest.fixture(scope="module")
def original(tf, trajectory):
    o = Original(tf, layer_params(trajectory[0].params))
    yield o
    o.sess.close()


# --- helpers -----------------------------------------------------------------------------------

def flat_params(state) -> list[np.ndarray]:
    return [np.asarray(a) for wb in layer_params(state.params) for a in wb]


def excess(got, want, rtol, atol) -> float:
    """max |got - want| / (atol + rtol |want|): <= 1 means within tolerance."""
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - w) / (atol + rtol * np.abs(w))))
               for g, w in zip(got, want))


def jax_step(state, b, metrics):
    """One jaxmlp step from a copy of ``state`` (train_step donates its input)."""
    new, m = train_step(jax.tree.map(jnp.copy, state), b, metrics=metrics)
    return new, {k: float(v) for k, v in m.items()}


def original_step(original, state, b):
    """One step of the original from ``state``'s parameters: metrics before, params and
    metrics after (its ``sess.run([accuracy, cross_entropy])`` after the train op)."""
    original.set_params(layer_params(state.params))
    before = original.metrics(b["image"], b["label"])
    original.update(b["image"], b["label"])
    after = original.metrics(b["image"], b["label"])
    return before, original.params(), after


def correct(accuracy, n: int) -> int:
    """The count of correct images behind an accuracy (exact: the two sides divide the
    count by n differently, XLA as a multiplication by 1/n, so the float32s may differ)."""
    return round(float(accuracy) * n)


def epsilon_shift(p_true: np.ndarray) -> float:
    """How much the + 1e-10 moves the mean loss of these images (log(1 + eps/p) <= eps/p)."""
    return float(np.mean(EPS_LOG / p_true))


# --- the checks ----------------------------------------------------------------------------------

def test_the_first_layer_sees_what_the_original_is_fed(digits):
    """jaxmlp feeds uint8 images and its MLP scales them; the original is fed ``input_data``'s
    floats. An MLP whose only layer is the identity returns what its first layer sees: the
    same float32 numbers, bit for bit, for every uint8 value (x / 255, or x * (1 / 255) in
    float64, differs from the reader's float32 product in the last bit for 126 of the 256)."""
    net = MLP((), init_stddev=0.0, in_features=784, num_classes=784, rngs=nnx.Rngs(0))
    net.layers[0].kernel[...] = jnp.eye(784, dtype=jnp.float32)
    every_value = np.resize(np.arange(256, dtype=np.uint8), (1, 28, 28))
    images = np.concatenate([digits["train"][0][:50], every_value])
    seen = np.asarray(net(jnp.asarray(images)))
    fed = to_original_inputs(images, np.zeros(len(images), int))[0].reshape(len(images), 784)
    assert seen.dtype == fed.dtype == np.float32 and np.array_equal(seen, fed)
    assert fed.min() == 0 and fed.max() == 1


@pytest.mark.parametrize("step", CHECK_STEPS)
def test_one_update_equals_the_originals(digits, trajectory, original, step):
    state, b = trajectory[step], batch(digits, step)
    old = flat_params(state)
    _, tf_new, _ = original_step(original, state, b)
    new, _ = jax_step(state, b, "after")
    assert excess(flat_params(new), tf_new, PARAM_RTOL, PARAM_ATOL) <= 1

    # The check can tell the plausible mistakes apart (SGD is linear in the learning rate,
    # so each mistake's update is the original's update scaled):
    #   lr 0.003 on the batch mean: 1/100 of the update; lr 0.3 on the batch sum: 100x.
    for scale in (1 / 100, 100):
        wrong = [o + scale * (t - o) for o, t in zip(old, tf_new)]
        assert excess(wrong, tf_new, PARAM_RTOL, PARAM_ATOL) > 1e4, scale  # the README's 10^4
    # ... and the update is not lost in the tolerance: no update at all fails it too.
    assert excess(old, tf_new, PARAM_RTOL, PARAM_ATOL) > 1e4


def test_fifty_steps_give_the_same_losses(digits, trajectory, original):
    state = jax.tree.map(jnp.copy, trajectory[0])
    original.set_params(layer_params(state.params))
    jax_losses, tf_losses, shifts = [], [], []
    for step in range(50):
        b = batch(digits, step)
        state, m = train_step(state, b, metrics="after")
        original.update(b["image"], b["label"])
        _, ce, p_true = original.metrics(b["image"], b["label"])
        jax_losses.append(float(m["loss"]))
        tf_losses.append(ce / B)  # summed over the batch -> per image
        shifts.append(epsilon_shift(p_true))
        assert p_true.min() > EPS_LOG  # no image in the capped regime
    np.testing.assert_allclose(jax_losses, tf_losses, rtol=TRAJECTORY_RTOL, atol=0)
    assert max(shifts) < TRAJECTORY_RTOL * min(tf_losses) / 10  # the 1e-10 plays no part
    assert np.mean(tf_losses[-10:]) < 0.8 * np.mean(tf_losses[:10])  # learning, not standing still


@pytest.mark.parametrize("step", CHECK_STEPS)
def test_after_metrics_are_the_originals_post_update_metrics(digits, trajectory, original, step):
    state, b = trajectory[step], batch(digits, step)
    tf_before, _, tf_after = original_step(original, state, b)
    (acc_after, ce_after, p_after), (acc_before, ce_before, _) = tf_after, tf_before
    loss_after, loss_before = ce_after / B, ce_before / B
    tol_after = LOSS_ATOL + LOSS_RTOL * loss_after

    _, after = jax_step(state, b, "after")
    assert correct(after["accuracy"], B) == correct(acc_after, B)
    assert abs(after["loss"] - loss_after) <= tol_after
    assert p_after.min() > EPS_LOG and epsilon_shift(p_after) < tol_after / 10

    # "before" is the original's pre-update read-out, which the check tells apart.
    _, before = jax_step(state, b, "before")
    assert correct(before["accuracy"], B) == correct(acc_before, B)
    assert abs(before["loss"] - loss_before) <= LOSS_ATOL + LOSS_RTOL * loss_before
    assert abs(before["loss"] - loss_after) > 10 * tol_after


@pytest.mark.parametrize("step", CHECK_STEPS)
def test_test_set_metrics_agree(digits, trajectory, original, step):
    state = trajectory[step]
    images, labels = digits["test"]
    original.set_params(layer_params(state.params))
    acc, ce, p_true = original.metrics(images, labels)
    got = evaluate(state, jnp.asarray(images), jnp.asarray(labels))
    got = {k: float(v) for k, v in got.items()}
    assert correct(got["accuracy"], N_TEST) == correct(acc, N_TEST)
    tol = LOSS_ATOL + LOSS_RTOL * ce / N_TEST
    assert abs(got["loss"] - ce / N_TEST) <= tol
    assert p_true.min() > EPS_LOG and epsilon_shift(p_true) < tol / 10
    if step == CHECK_STEPS[-1]:  # the data are learnable, so the comparison is not vacuous
        assert got["accuracy"] > 0.8


def test_log_epsilon_matters_only_below_1e_10(tf):
    """The original's loss -log(p + 1e-10) caps each image at -log(1e-10) ~= 23.03 and
    (nearly) stops its gradient once p_true < 1e-10; jaxmlp's log-softmax keeps growing
    with a full gradient. At ordinary probabilities the two agree."""
    from jaxmlp.train import cross_entropy as jax_ce

    tf1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        logits = tf1.placeholder(tf.float32, [None, 10])
        Y_ = tf1.placeholder(tf.float32, [None, 10])
        Y = tf.nn.softmax(logits)
        ce = -tf.reduce_sum(Y_ * tf1.log(Y + 1e-10), 1)  # the original's, per image
        grad = tf.gradients(ce, logits)[0]
    # True class 0; a wrong class ahead by `gap`: p_true ~ exp(-gap).
    gaps = np.array([5.0, 13.0, 30.0, 40.0], np.float32)  # p_true ~ 7e-3, 2e-6, 9e-14, 4e-18
    z = np.zeros((len(gaps), 10), np.float32)
    z[:, 1] = gaps
    onehot = np.eye(10, dtype=np.float32)[np.zeros(len(gaps), int)]
    with tf1.Session(graph=g) as sess:
        tf_loss, tf_grad = sess.run([ce, grad], {logits: z, Y_: onehot})
    labels = jnp.zeros(len(gaps), jnp.int32)
    jax_loss = np.asarray(jax_ce(jnp.asarray(z), labels))
    jax_grad = np.asarray(jax.grad(lambda l: jax_ce(l, labels).sum())(jnp.asarray(z)))
    cap = -math.log(EPS_LOG)  # 23.03

    ordinary, tiny = gaps < cap, gaps > cap
    np.testing.assert_allclose(tf_loss[ordinary], jax_loss[ordinary], rtol=1e-4)
    np.testing.assert_allclose(tf_grad[ordinary], jax_grad[ordinary], rtol=1e-3, atol=1e-6)
    # Below 1e-10: the original's loss stops at the cap and its gradient vanishes ...
    assert np.all(tf_loss[tiny] <= cap + 1e-3)
    assert np.all(np.abs(tf_grad[tiny]).max(1) < 1e-3)
    # ... while jaxmlp's is the true -log p (= the gap here) with a full-size gradient.
    np.testing.assert_allclose(jax_loss[tiny], gaps[tiny], rtol=1e-5)
    assert np.all(np.abs(jax_grad[tiny]).max(1) > 0.99)
