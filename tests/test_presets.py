"""Each rung of the ladder is the formula it claims: one or two of jaxmlp's steps against a
float64 numpy reference (forward, backprop, SGD or Adam written out), its initialisation,
its learning-rate decay, and its dropout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import loop, model, train
from jaxmlp.config import PRESETS, Config

pytestmark = pytest.mark.slow  # every rung compiled several times: about 15 s cold

B1, B2, EPS = 0.9, 0.999, 1e-8  # Adam's defaults, as in tf.train.AdamOptimizer


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _layers(params) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(k, np.float64), np.asarray(b, np.float64)) for k, b in model.layer_params(params)]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACTIVATIONS = {  # f and f'
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
}


def reference_loss_and_grads(layers, batch, activation):
    """Mean softmax cross-entropy of the MLP ``layers`` [(W (n_in, n_out), b)] on ``batch`` and
    its gradient [(dW, db)], by hand: forward, softmax, backprop. float64."""
    f, df = ACTIVATIONS[activation]
    y = np.asarray(batch["label"])
    h = [np.asarray(batch["image"], np.float64).reshape(len(y), -1) / 255.0]
    z = []
    for i, (w, b) in enumerate(layers):
        z.append(h[-1] @ w + b)
        if i < len(layers) - 1:
            h.append(f(z[-1]))
    logits = z[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)  # dL/dlogits of the batch mean
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i] = (h[i].T @ d, d.sum(0))
        if i:
            d = (d @ layers[i][0].T) * df(z[i - 1])
    return loss, grads


def reference_lr(c: Config, count: int) -> float:
    """The rung's learning rate for its update number ``count`` (0-based)."""
    if not c.lr_decay_steps:
        return c.learning_rate
    return c.lr_min + (c.learning_rate - c.lr_min) * math.exp(-count / c.lr_decay_steps)


def _state(name, seed=0, **overrides):
    c = Config.from_preset(name, **overrides)
    return c, loop.mlp_init(c)(jax.random.key(seed))


# Initialisation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_initialises_as_the_talk(name):
    """softmax: all zeros; the others: truncated normal weights, hidden biases at the rung's
    bias_init (0.1 with the decay), output bias 0. Catches a bias init applied to the output
    layer too, or not at all."""
    c, state = _state(name)
    layers = _layers(state.params)
    assert len(layers) == len(c.hidden) + 1
    want_bias = {"softmax": 0.0, "sigmoid": 0.0, "relu": 0.0, "relu-lrdecay": 0.1,
                 "relu-lrdecay-dropout": 0.1}[name]
    for i, (w, b) in enumerate(layers):
        np.testing.assert_allclose(b, want_bias if i < len(layers) - 1 else 0.0, rtol=1e-7)
        if name == "softmax":
            assert not w.any()
        else:
            assert np.abs(w).max() <= 0.2 + 1e-6 and 0.07 < w.std() < 0.1
    if name == "softmax":
        assert model.num_params(state.params) == 7850  # 784 x 10 + 10


# One and two steps against the formula --------------------------------------------------


def _reference_updates(c: Config, g1, g2):
    """The rung's first and second parameter updates for gradients g1, g2 (lists of arrays)."""
    lr1, lr2 = reference_lr(c, 0), reference_lr(c, 1)
    if c.optimizer == "sgd":
        return [-lr1 * g for g in g1], [-lr2 * g for g in g2]
    u1, u2 = [], []
    for a, b in zip(g1, g2):
        m1, v1 = (1 - B1) * a, (1 - B2) * a ** 2
        m2, v2 = B1 * m1 + (1 - B1) * b, B2 * v1 + (1 - B2) * b ** 2
        u1.append(-lr1 * (m1 / (1 - B1)) / (np.sqrt(v1 / (1 - B2)) + EPS))
        u2.append(-lr2 * (m2 / (1 - B1 ** 2)) / (np.sqrt(v2 / (1 - B2 ** 2)) + EPS))
    return u1, u2


def _flat(layers):
    return [x for pair in layers for x in pair]


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "relu", "relu-lrdecay"])
def test_two_steps_of_each_rung_equal_the_formula(name):
    """Two train steps against numpy: the rung's activation (sigmoid vs ReLU), its loss, and its
    optimizer written out (SGD; Adam with m, v, bias correction; the decayed lr of each update).

    Catches a wrong activation, a summed instead of mean loss, Adam without bias correction,
    a schedule that starts decayed, or a step that does not advance the schedule. Adam's
    update is a ratio of moments, so elements whose gradient is at float32 rounding level
    (|g| < 1e-4 of the layer's largest) are left out; exact zeros (dead units) must stay zero.
    """
    c, state = _state(name, seed=1)
    b1, b2 = _batch(100, seed=1), _batch(100, seed=2)
    p0 = _layers(state.params)
    s1, m1 = train.train_step(_copy(state), b1)
    p1 = _layers(s1.params)
    s2, m2 = train.train_step(_copy(s1), b2)
    p2 = _layers(s2.params)
    loss1, g1 = reference_loss_and_grads(p0, b1, c.activation)
    loss2, g2 = reference_loss_and_grads(p1, b2, c.activation)
    np.testing.assert_allclose(float(m1["loss"]), loss1, rtol=1e-5)  # metrics: before the update
    np.testing.assert_allclose(float(m2["loss"]), loss2, rtol=1e-5)
    g1, g2 = _flat(g1), _flat(g2)
    want1, want2 = _reference_updates(c, g1, g2)
    got1 = [a - b for a, b in zip(_flat(p1), _flat(p0))]
    got2 = [a - b for a, b in zip(_flat(p2), _flat(p1))]
    compared = total = 0
    for got, want, grads in ((got1, want1, [g1]), (got2, want2, [g1, g2])):
        for k, (u, v) in enumerate(zip(got, want)):
            scale = max(np.abs(g[k]).max() for g in grads)
            if c.optimizer == "sgd":
                # float32 backprop: errors of ~1e-5 of the layer's largest gradient
                np.testing.assert_allclose(u, v, rtol=2e-3, atol=1e-4 * np.abs(v).max())
                continue
            zero = np.all([g[k] == 0 for g in grads], axis=0)
            assert not np.any(u[zero]), "a zero gradient moved a parameter"
            clear = np.all([np.abs(g[k]) > 1e-4 * scale for g in grads], axis=0)
            np.testing.assert_allclose(u[clear], v[clear], rtol=2e-3, atol=1e-3 * c.learning_rate)
            compared, total = compared + clear.sum(), total + clear.size
    assert c.optimizer == "sgd" or compared > 0.5 * total  # not a vacuous comparison


@pytest.mark.parametrize("name", ["sigmoid", "relu-lrdecay"])
def test_adam_of_the_rung_is_written_out_for_two_updates(name):
    """The rung's optimizer on made-up gradients, tiny ones included: m, v, bias correction,
    eps 1e-8 (a gradient of 1e-8 moves by half the learning rate), and the lr of each update.

    Catches eps inside the square root or of another size, other betas, or no bias correction.
    """
    c, state = _state(name, hidden=(8,))
    rng = np.random.default_rng(0)

    def made_up():
        g = [rng.normal(0, 1e-3, np.shape(x)) for x in jax.tree.leaves(state.params)]
        g[0].flat[:4] = [1e-8, -1e-8, 0.0, 3e-9]  # where eps matters
        return g

    g1, g2 = made_up(), made_up()
    as_tree = lambda g: jax.tree.unflatten(jax.tree.structure(state.params),
                                           [jnp.asarray(x, jnp.float32) for x in g])
    u1, opt = state.tx.update(as_tree(g1), state.opt_state, state.params)
    u2, _ = state.tx.update(as_tree(g2), opt, state.params)
    # The reference sees the float32 gradients the optimizer saw.
    g1 = [np.asarray(np.float32(x), np.float64) for x in g1]
    g2 = [np.asarray(np.float32(x), np.float64) for x in g2]
    want1, want2 = _reference_updates(c, g1, g2)
    for got, want in ((u1, want1), (u2, want2)):
        for u, v in zip(jax.tree.leaves(got), want):
            # float32 moments: ~1e-5 relative, or ~1e-10 absolute where m nearly cancels
            np.testing.assert_allclose(np.asarray(u), v, rtol=3e-5, atol=1e-6 * c.learning_rate)
    first = np.asarray(jax.tree.leaves(u1)[0]).flat[:4]
    np.testing.assert_allclose(first[:2], [-c.learning_rate / 2, c.learning_rate / 2], rtol=1e-5)


# The decay schedule --------------------------------------------------------------------


def _lr_per_update(state, num_updates: int) -> np.ndarray:
    """The learning rate of each of ``num_updates`` Adam updates, read off the optimizer:
    with a constant gradient of 1, m-hat = v-hat = 1, so update t is -lr(t) / (1 + eps)."""
    ones = jax.tree.map(jnp.ones_like, state.params)

    def body(opt, _):
        u, opt = state.tx.update(ones, opt, state.params)
        return opt, -jax.tree.leaves(u)[0].ravel()[0] * (1 + EPS)

    return np.asarray(jax.lax.scan(body, state.opt_state, length=num_updates)[1], np.float64)


def test_decay_schedule_of_the_decay_rungs():
    """lr(t) = 0.0001 + 0.0029 exp(-t / 2000): 0.003 at 0, 0.0001 + 0.0029/e at 2,000 and
    0.0001 + 0.0029 e^-5 at 10,000. Catches a decay from another peak or to another floor,
    a rate of exp(-t/2000) without the floor, or a per-epoch staircase."""
    for name in ("relu-lrdecay", "relu-lrdecay-dropout"):
        c, state = _state(name, hidden=(4,))
        lr = _lr_per_update(state, 10_001)
        want = {0: 0.003, 2000: 0.0001 + 0.0029 / math.e, 10_000: 0.0001 + 0.0029 * math.exp(-5)}
        for t, v in want.items():
            np.testing.assert_allclose(lr[t], v, rtol=1e-5, err_msg=f"{name} at update {t}")
        # Every update; Adam's float32 bias correction rounds to ~1e-5 (a staircase or a
        # one-update lag would be off by 5e-4 already at update 1).
        np.testing.assert_allclose(lr, [reference_lr(c, t) for t in range(10_001)], rtol=3e-5)
    # The constant rungs stay constant.
    _, state = _state("sigmoid", hidden=(4,))
    np.testing.assert_allclose(_lr_per_update(state, 50), 0.003, rtol=1e-5)


# Dropout -------------------------------------------------------------------------------


def _hidden_units(state, key, *, train_mode: bool) -> np.ndarray:
    """The last hidden layer's output (after dropout) for one image, (N,): with a batch of one,
    dL/dW_out[j, c] = h_j dL/dlogit_c = h_j dL/db_out[c]."""
    batch = _batch(1, seed=5)

    def loss(params):
        logits = train.forward(state, params, batch["image"], train=train_mode, key=key)[0]
        return train.cross_entropy(logits, batch["label"]).mean()

    w, b = model.layer_params(jax.grad(loss)(state.params))[-1]
    return np.asarray(w[:, 0] / b[0], np.float64)


def test_dropout_drops_a_quarter_and_scales_the_rest_by_4_3():
    """pkeep 0.75: about a quarter of the units are zeroed in training (within 5 binomial
    standard deviations over 4000 units), the kept ones are multiplied by 1 / 0.75, and
    evaluation drops and scales nothing. Catches a keep/drop mix-up (0.75 dropped), no
    rescaling, rescaling by 0.75, or dropout at evaluation."""
    n = 4000
    # Zero weights and bias 0.1: every unit outputs relu(0.1) = 0.1 before dropout.
    _, state = _state("relu-lrdecay-dropout", hidden=(n,), init_stddev=0.0)
    rate = PRESETS["relu-lrdecay-dropout"]["dropout"]
    assert rate == 0.25
    dropped = []
    for i in range(3):
        h = _hidden_units(state, jax.random.key(i), train_mode=True)
        kept = h != 0
        np.testing.assert_allclose(h[kept], 0.1 / 0.75, rtol=1e-5)
        dropped.append(1 - kept.mean())
        assert abs(dropped[-1] - rate) < 5 * math.sqrt(rate * (1 - rate) / n), dropped
    assert len(set(dropped)) > 1  # three keys, three masks
    np.testing.assert_allclose(_hidden_units(state, None, train_mode=False), 0.1, rtol=1e-5)
    # The rungs without dropout: training is evaluation.
    _, plain = _state("relu-lrdecay", hidden=(n,), init_stddev=0.0)
    np.testing.assert_allclose(_hidden_units(plain, jax.random.key(0), train_mode=True), 0.1, rtol=1e-5)
