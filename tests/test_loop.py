"""The loop level: data order, fused steps, recording, divergence, ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import loop, train
from jaxmlp.config import Config

CONFIG = Config(hidden=(16, 8), batch_size=50, steps=40, eval_every=20, log_every=20)


@pytest.fixture(scope="module")
def data(synthetic_dataset):
    ds = synthetic_dataset
    return loop.Data(jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels),
                     jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels))


def _init(config=CONFIG, n=1000):
    return loop.init_run(loop.mlp_init(config), **loop.members(config), num_steps=config.steps,
                         eval_every=config.eval_every, num_examples=n, batch_size=config.batch_size,
                         ensemble=config.is_ensemble)


def test_each_epoch_is_a_fresh_permutation():
    orders = np.asarray(loop.epoch_orders(jax.random.key(0), num_epochs=3, num_examples=100))
    assert orders.shape == (3, 100)
    for o in orders:
        assert sorted(o) == list(range(100))
    assert not np.array_equal(orders[0], np.arange(100))  # the first epoch is shuffled too
    assert not np.array_equal(orders[0], orders[1])


def test_batches_walk_through_each_epoch_without_repeats(data):
    orders = loop.epoch_orders(jax.random.key(0), num_epochs=2, num_examples=1000)
    seen = np.concatenate([np.asarray(loop.batch_at(data, orders, jnp.int32(t), 100)["label"])
                           for t in range(10)])
    labels = np.asarray(data.train_labels)[np.asarray(orders[0])]
    np.testing.assert_array_equal(seen, labels)  # epoch 0, in order, every example once
    second = np.asarray(loop.batch_at(data, orders, jnp.int32(10), 100)["label"])
    np.testing.assert_array_equal(second, np.asarray(data.train_labels)[np.asarray(orders[1][:100])])


def test_fused_steps_equal_one_step_at_a_time(data):
    state, _, orders = _init()
    fused, m = loop.run_steps(jax.tree.map(jnp.copy, state), data, orders, num_steps=15, batch_size=50)
    losses = []
    for t in range(15):
        state, mt = train.train_step(state, loop.batch_at(data, orders, jnp.int32(t), 50))
        losses.append(float(mt["loss"]))
    np.testing.assert_allclose(m["loss"], losses, rtol=1e-5)
    np.testing.assert_array_equal(m["step"], np.arange(1, 16))
    for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(fused.step) == 15


def test_run_steps_refuses_steps_past_its_orders(data):
    state, _, orders = _init()  # 40 steps of 50 from 1000: 2 epochs of 20 steps
    assert orders.shape == (2, 1000)
    state, _ = loop.run_steps(state, data, orders, num_steps=40, batch_size=50)
    with pytest.raises(ValueError, match="more epochs than the 2 in orders") as e:
        loop.run_steps(state, data, orders, num_steps=1, batch_size=50)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_ensemble_member_starts_as_the_single_run_with_its_seed(data):
    ens = CONFIG.replace(seeds=(3, 4))
    state_k, hist_k, orders_k = _init(ens)
    state_1, _, orders_1 = _init(CONFIG.replace(seed=4))
    np.testing.assert_array_equal(orders_k[1], orders_1)
    for a, b in zip(jax.tree.leaves(state_k.params), jax.tree.leaves(state_1.params)):
        np.testing.assert_array_equal(a[1], b)
    assert hist_k["test_loss"].shape == (2, 3) and hist_k["train_loss"].shape == (2, 40)
    sk, mk = loop.run_steps(state_k, data, orders_k, num_steps=20, batch_size=50)
    s1, m1 = loop.run_steps(state_1, data, orders_1, num_steps=20, batch_size=50)
    np.testing.assert_allclose(mk["loss"][1], m1["loss"], rtol=1e-5)  # batched matmul rounding


def _run_chunks(config, data, chunks):
    state, history, orders = _init(config)
    alive = jnp.ones(state.step.shape, bool)
    kw = dict(eval_every=config.eval_every, eval_batch_size=128)
    state, history, rep = loop.record(state, jax.tree.map(jnp.copy, state), history,
                                      loop.nan_metrics(state, config.eval_every), alive, data, **kw)
    reports = [rep]
    for _ in range(chunks):
        end, m = loop.fused_steps(state, data, orders, num_steps=config.eval_every, batch_size=50)
        state, history, rep = loop.record(state, end, history, m, rep["alive"], data, **kw)
        reports.append(rep)
    return state, jax.device_get(history), jax.device_get(reports)


def test_record_writes_every_step_and_scores_the_whole_test_set(data):
    state, h, reports = _run_chunks(CONFIG, data, 2)
    assert np.all(np.isfinite(h["train_loss"])) and np.all(np.isfinite(h["test_loss"]))
    np.testing.assert_array_equal(h["test_step"], [0, 20, 40])
    ev = train.evaluate(state, data.test_images, data.test_labels)
    assert h["test_accuracy"][-1] == pytest.approx(float(ev["accuracy"]))
    assert reports[-1]["step"] == 40 and h["test_accuracy"][-1] > h["test_accuracy"][0]
    assert reports[-1]["predicted"].shape == (303,)


def test_a_diverged_member_is_frozen_finite_and_the_others_train_on(data):
    """One bad member must not stop, or change, the others."""
    bad = CONFIG.replace(seeds=(0, 1), learning_rates=(0.1, 1e30))
    good = CONFIG.replace(seeds=(0, 1), learning_rates=(0.1, 0.2))
    s_bad, h_bad, r_bad = _run_chunks(bad, data, 2)
    s_good, h_good, _ = _run_chunks(good, data, 2)
    alive = r_bad[-1]["alive"]
    assert alive.tolist() == [True, False, True, False]
    for i in (0, 2):  # the healthy members are the same as beside healthy neighbours
        np.testing.assert_allclose(h_bad["test_loss"][i], h_good["test_loss"][i], rtol=1e-5)
    for i in (1, 3):
        loss = h_bad["train_loss"][i]
        first = int(np.argmax(~np.isfinite(loss)))
        assert np.all(np.isfinite(loss[:first])) and np.all(np.isposinf(loss[first:]))
        assert np.all(np.isnan(h_bad["train_accuracy"][i][first:]))
        assert np.all(np.isposinf(h_bad["test_loss"][i][1:]))
    for leaf in jax.tree.leaves(s_bad.params):
        assert np.all(np.isfinite(leaf))  # no state, so no checkpoint, holds NaN


def test_percentiles_are_numpys_for_small_layers_and_bound_big_ones():
    rng = np.random.default_rng(0)
    q = jnp.asarray([0, 10, 25, 50, 75, 90, 100], jnp.float32)
    small = rng.normal(size=(30, 20)).astype(np.float32)
    np.testing.assert_allclose(loop._percentiles(jnp.asarray(small), q),
                               np.percentile(small, np.asarray(q)), rtol=1e-5, atol=1e-6)
    big = rng.normal(size=(784, 200)).astype(np.float32)
    p = np.asarray(loop._percentiles(jnp.asarray(big), q))
    assert p[0] == big.min() and p[-1] == big.max()
    np.testing.assert_allclose(p[1:-1], np.percentile(big, np.asarray(q[1:-1])), atol=0.1)


def test_your_optimizer_is_used_as_given_unless_a_sweep_replaces_its_rate():
    import optax
    from flax import nnx

    from jaxmlp.model import MLP

    def init(key):
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
        return train.TrainState.create(MLP((8,), rngs=nnx.Rngs(key)), tx)

    config = CONFIG.replace(learning_rate=0.3)  # an MLP front-end field: not yours
    kw = dict(num_steps=40, eval_every=20, num_examples=1000, batch_size=50)
    state, _, _ = loop.init_run(init, **loop.members(config), **kw)
    assert float(state.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.05)
    swept = config.replace(learning_rates=(0.1, 0.2))
    state, _, _ = loop.init_run(init, **loop.members(swept), **kw, ensemble=True)
    np.testing.assert_allclose(state.opt_state.hyperparams["learning_rate"], [0.1, 0.2])
