"""Invariants of the training core: the step, the loss, evaluation and the data order."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmlp import loop, model, train
from jaxmlp.config import Config

SMALL = Config(hidden=(32, 16), steps=20, eval_every=10, log_every=10)


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def test_train_step_jit_equals_no_jit():
    state = loop.init_state(jax.random.key(0), Config())
    batch = _batch(100)
    with jax.disable_jit():
        eager, m_eager = train._train_step(_copy(state), batch)
    jitted, m_jit = train.train_step(_copy(state), batch)
    np.testing.assert_allclose(m_jit["loss"], m_eager["loss"], rtol=1e-6)
    assert float(m_jit["accuracy"]) == float(m_eager["accuracy"])
    for a, b in zip(jax.tree.leaves(jitted.params), jax.tree.leaves(eager.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(jitted.step) == int(eager.step) == 1


def test_train_step_donates_and_does_not_retrace():
    state = loop.init_state(jax.random.key(0), SMALL)
    before = train.train_step._cache_size()
    for i in range(5):
        old = state
        state, metrics = train.train_step(state, _batch(8, seed=i))
    assert train.train_step._cache_size() == before + 1  # one compile for five calls
    assert old.params["layers"][0]["kernel"][...].is_deleted()  # the old state was donated
    assert int(state.step) == 5


def test_summed_loss_at_lr_0003_equals_mean_loss_at_lr_03():
    """The original's summed cross-entropy with lr 0.003 is our mean with lr 0.3 at batch 100."""
    state = loop.init_state(jax.random.key(1), Config())
    batch = _batch(100)
    ours, _ = train.train_step(_copy(state), batch)

    def summed(params):
        logits = train.forward(state, params, batch["image"], train=False)[0]
        return train.cross_entropy(logits, batch["label"]).sum()

    tx = optax.sgd(0.003)
    grads = jax.grad(summed)(state.params)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    original = optax.apply_updates(state.params, updates)
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(original)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert Config().learning_rate == 0.3 and Config().batch_size == 100


def test_initial_loss_is_near_ln10():
    state = loop.init_state(jax.random.key(2), Config())
    b = _batch(1000)
    out = train.evaluate(state, b["image"], b["label"])
    assert abs(float(out["loss"]) - math.log(10)) < 0.1


def test_overfits_a_tiny_batch():
    # On uniform-noise images at lr 0.3, about half the seeds (under the old init too) kill
    # most ReLUs in the first steps and stall near ln 10; seed 0 is one that does not.
    state = loop.init_state(jax.random.key(0), Config())
    batch = _batch(10)
    losses = []
    for _ in range(150):
        state, m = train.train_step(state, batch)
        losses.append(float(m["loss"]))
    _, last = train.train_step(state, batch)
    assert losses[-1] < losses[0] / 20
    assert float(last["accuracy"]) == 1.0


def test_step_metrics_match_hand_computation():
    state = loop.init_state(jax.random.key(4), SMALL)
    batch = _batch(50)
    logits = np.asarray(train.forward(state, state.params, batch["image"], train=False)[0], np.float64)
    labels = np.asarray(batch["label"])
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    _, m = train.train_step(_copy(state), batch)
    np.testing.assert_allclose(float(m["loss"]), -log_p[np.arange(50), labels].mean(), rtol=1e-5)
    assert float(m["accuracy"]) == pytest.approx((logits.argmax(1) == labels).mean())


def test_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.asarray([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    ce = train.cross_entropy(logits, jnp.asarray([0, 0]))
    np.testing.assert_allclose(ce, [0.0, 2000.0], rtol=1e-6)


@pytest.mark.parametrize("batch_size", [100, 256, 1037, 5000])
def test_evaluate_scores_every_example(batch_size):
    """1037 examples (prime): no batch size divides it; padding must never count."""
    state = loop.init_state(jax.random.key(5), SMALL)
    b = _batch(1037, seed=7)
    logits = np.asarray(train.forward(state, state.params, b["image"], train=False)[0])
    labels = np.asarray(b["label"])
    # Make exactly 1037 - 3 examples wrong except three we force right, by relabelling.
    preds = logits.argmax(1)
    labels = np.where(np.arange(1037) < 3, preds, (preds + 1) % 10).astype(np.int32)
    out = train.evaluate(state, b["image"], jnp.asarray(labels), batch_size=batch_size)
    assert round(float(out["accuracy"]) * 1037) == 3
    ce = np.asarray(train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
    np.testing.assert_allclose(float(out["loss"]), ce.mean(), rtol=1e-5)


def test_step_works_under_vmap_and_scan():
    """vmap over two states equals each alone; scan over steps equals calling step by step."""
    s0 = loop.init_state(jax.random.key(0), SMALL)
    s1 = loop.init_state(jax.random.key(1), SMALL)
    batch = _batch(16)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
    vstate, vm = jax.jit(jax.vmap(train._train_step, in_axes=(0, None)))(stacked, batch)
    for i, s in enumerate((s0, s1)):
        one, m = train._train_step(s, batch)
        np.testing.assert_allclose(vm["loss"][i], m["loss"], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(vstate.params), jax.tree.leaves(one.params)):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7)

    batches = {k: jnp.stack([_batch(16, seed=i)[k] for i in range(3)]) for k in batch}
    scanned, sm = jax.jit(lambda s, b: jax.lax.scan(train._train_step, s, b))(s0, batches)
    s = s0
    for i in range(3):
        s, m = train._train_step(s, {k: v[i] for k, v in batches.items()})
        np.testing.assert_allclose(sm["loss"][i], m["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(s.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_each_epoch_visits_every_example_once():
    n, b = 1000, 30  # 33 full batches per epoch; 10 examples skipped each epoch
    orders = loop.epoch_orders(jax.random.key(0), num_epochs=3, num_examples=n)
    data = loop.Data(jnp.arange(n)[:, None], jnp.arange(n, dtype=jnp.int32), None, None)
    steps_per_epoch = n // b
    for epoch in range(3):
        seen = np.concatenate([np.asarray(loop.batch_at(data, orders, jnp.int32(epoch * steps_per_epoch + i), b)["label"])
                               for i in range(steps_per_epoch)])
        assert len(np.unique(seen)) == len(seen) == steps_per_epoch * b
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch


def test_run_steps_equals_step_by_step():
    """The fused scan is the same computation as calling the public step in a loop."""
    rng = np.random.default_rng(0)
    data = loop.Data(jnp.asarray(rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)),
                      jnp.asarray(rng.integers(0, 10, 200), jnp.int32), None, None)
    orders = loop.epoch_orders(jax.random.key(9), num_epochs=2, num_examples=200)
    s = loop.init_state(jax.random.key(0), SMALL)
    fused, metrics = loop.run_steps(_copy(s), data, orders, num_steps=12, batch_size=20)
    losses = []
    for i in range(12):
        s, m = train.train_step(s, loop.batch_at(data, orders, jnp.int32(i), 20))
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(s.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
