"""The step level: the state, the step, evaluation, your own loss and metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxmlp import loop, model, train
from jaxmlp.config import Config

SMALL = Config(hidden=(16, 8), steps=20, eval_every=10, log_every=10)


def _batch(n=32, seed=0, shape=(28, 28), classes=10):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8)),
            "label": jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


def _learnable(n):
    from conftest import synthetic
    ds = synthetic(n, 1)
    return {"image": jnp.asarray(ds.train_images), "label": jnp.asarray(ds.train_labels)}


def _state(config=SMALL, seed=0):
    return loop.mlp_init(config)(jax.random.key(seed))


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def test_seed_network_has_the_pinned_parameter_count():
    state = _state(Config())
    shapes = [(k.shape, b.shape) for k, b in model.layer_params(state.params)]
    assert shapes == [((784, 200), (200,)), ((200, 100), (100,)), ((100, 60), (60,)),
                      ((60, 30), (30,)), ((30, 10), (10,))]
    assert model.num_params(state.params) == 185_300


def test_jit_equals_no_jit_and_the_step_does_not_retrace():
    state, batch = _state(), _batch()
    ref_state, ref_m = train._train_step(_copy(state), batch)
    train.train_step._clear_cache()
    for i in range(3):
        state, m = train.train_step(state, _batch(seed=i))
        if i == 0:
            np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-6)
            for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert train.train_step._cache_size() == 1
    assert int(state.step) == 3


def test_same_seed_gives_identical_states_and_other_seeds_differ():
    a, b, c = _state(seed=1), _state(seed=1), _state(seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    assert not np.array_equal(jax.tree.leaves(a.params)[1], jax.tree.leaves(c.params)[1])


def test_loss_falls_on_a_tiny_batch():
    state, batch = _state(), _learnable(32)
    losses = []
    for _ in range(60):
        state, m = train.train_step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.2 * losses[0]


def test_mean_loss_at_lr_0_3_is_the_originals_summed_loss_at_lr_0_003():
    """The Config's docstring: 0.003 * grad(sum) == 0.3 * grad(mean) at B = 100."""
    batch = _batch(100)
    mean = train.TrainState.create(model.MLP(rngs=nnx.Rngs(0)), optax.sgd(0.3))
    summed = train.TrainState.create(model.MLP(rngs=nnx.Rngs(0)), optax.sgd(0.003),
                                     loss=lambda lg, y: 100.0 * train.cross_entropy(lg, y))
    a, _ = train.train_step(mean, batch)
    b, _ = train.train_step(summed, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-7)


def test_metrics_are_the_hand_computed_means():
    state, batch = _state(), _batch(50)
    logits = train.forward(state, state.params, batch["image"], train=False)[0]
    _, m = train.train_step(_copy(state), batch)
    z = np.asarray(logits, np.float64)
    y = np.asarray(batch["label"])
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(m["loss"], -logp[np.arange(50), y].mean(), rtol=1e-5)
    assert float(m["accuracy"]) == pytest.approx(np.mean(z.argmax(1) == y))


def test_the_model_sees_images_as_the_data_holds_them():
    """Nothing rescales behind the model's back; the MLP scales uint8 itself."""
    seen = {}

    class Probe(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(1, 10, rngs=nnx.Rngs(0))

        def __call__(self, x):
            seen["dtype"] = x.dtype
            return self.linear(jnp.max(x.reshape(x.shape[0], -1), axis=1, keepdims=True).astype(jnp.float32))

    state = train.TrainState.create(Probe(), optax.sgd(0.1))
    batch = {"image": jnp.full((4, 28, 28), 255, jnp.uint8), "label": jnp.zeros(4, jnp.int32)}
    logits = train.forward(state, state.params, batch["image"], train=False)[0]
    assert seen["dtype"] == jnp.uint8
    k, b = (np.asarray(v) for v in model.layer_params(state.params)[0])
    np.testing.assert_allclose(logits[0], 255 * k[0] + b, rtol=1e-6)  # 255, not 1.0
    mlp = _state()
    u8 = _batch(8)["image"]
    as_u8 = train.forward(mlp, mlp.params, u8, train=False)[0]
    as_float = train.forward(mlp, mlp.params, u8.astype(jnp.float32) / 255, train=False)[0]
    np.testing.assert_allclose(as_u8, as_float, rtol=1e-5, atol=1e-6)


def test_your_own_loss_and_metrics_reach_the_step_and_evaluation():
    def top2(logits, labels):
        return jnp.any(jax.lax.top_k(logits, 2)[1] == labels[:, None], axis=1).astype(jnp.float32)

    def squared(logits, labels):  # a per-example loss that is not cross-entropy
        return jnp.sum((jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1])) ** 2, -1)

    net = model.MLP((16,), rngs=nnx.Rngs(0))
    state = train.TrainState.create(net, optax.adam(1e-2), loss=squared, metrics={"top2": top2})
    assert state.metric_names == ("loss", "accuracy", "top2")
    batch = _learnable(64)
    logits = train.forward(state, state.params, batch["image"], train=False)[0]
    ev = train.evaluate(state, batch["image"], batch["label"], batch_size=24)
    np.testing.assert_allclose(ev["loss"], squared(logits, batch["label"]).mean(), rtol=1e-5)
    np.testing.assert_allclose(ev["top2"], top2(logits, batch["label"]).mean(), rtol=1e-6)
    assert ev["top2"] >= ev["accuracy"]
    losses = []
    for _ in range(20):
        state, m = train.train_step(state, batch)
        losses.append(float(m["loss"]))
        assert set(m) == {"loss", "accuracy", "top2"}
    assert losses[-1] < losses[0] / 2  # it minimised the squared loss


def test_a_loss_that_is_not_per_example_is_refused_in_one_line():
    state = train.TrainState.create(model.MLP((8,), rngs=nnx.Rngs(0)), optax.sgd(0.1),
                                    loss=lambda lg, y: train.cross_entropy(lg, y).mean())
    with pytest.raises(ValueError, match=r"loss must give one value per example, shape \(32,\)") as e:
        train.train_step(state, _batch())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="another name"):
        train.TrainState.create(model.MLP((8,), rngs=nnx.Rngs(0)), optax.sgd(0.1),
                                metrics={"loss": train.accuracy})


def test_evaluate_scores_every_example_whatever_the_batch_size():
    state, batch = _state(), _batch(103)
    whole = train.evaluate(state, batch["image"], batch["label"], batch_size=103)
    for b in (10, 50, 1000):  # 103 = 10*10 + 3: the padded last batch must be masked
        part = train.evaluate(state, batch["image"], batch["label"], batch_size=b)
        np.testing.assert_allclose(part["loss"], whole["loss"], rtol=1e-6)
        assert float(part["accuracy"]) == float(whole["accuracy"])
    pred = np.asarray(train.predict(state, batch["image"]))
    assert float(whole["accuracy"]) == pytest.approx(np.mean(pred == np.asarray(batch["label"])))


def test_evaluate_on_an_ensemble_gives_each_members_values():
    states = [_state(seed=s) for s in (0, 1, 2)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    batch = _batch(40)
    ev = train.evaluate(stacked, batch["image"], batch["label"], batch_size=16)
    assert ev["loss"].shape == (3,)
    for i, s in enumerate(states):
        one = train.evaluate(s, batch["image"], batch["label"], batch_size=16)
        np.testing.assert_allclose(ev["loss"][i], one["loss"], rtol=1e-6)
        assert float(ev["accuracy"][i]) == float(one["accuracy"])


def test_dropout_is_random_in_training_fixed_by_step_and_off_in_evaluation():
    state = _state(SMALL.replace(dropout=0.5))
    batch = _batch(8)
    fwd = lambda s, k: train.forward(s, s.params, batch["image"], train=True, key=k)[0]
    assert not np.allclose(fwd(state, jax.random.key(1)), fwd(state, jax.random.key(2)))
    np.testing.assert_array_equal(fwd(state, jax.random.key(1)), fwd(state, jax.random.key(1)))
    ev = lambda: train.forward(state, state.params, batch["image"], train=False)[0]
    no_drop = _state(SMALL)  # same parameters: dropout has none
    np.testing.assert_array_equal(ev(), train.forward(no_drop, no_drop.params, batch["image"], train=False)[0])


class _BNNet(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(784, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.b = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 255
        return self.b(self.drop(jax.nn.relu(self.bn(self.a(x)))))


@pytest.mark.slow
def test_a_batchnorm_model_trains_under_jit_scan_and_vmap():
    state = train.TrainState.create(_BNNet(nnx.Rngs(0)), optax.sgd(0.1))
    batch = _batch(32)
    stats0 = np.asarray(jax.tree.leaves(state.rest)[0]).copy()
    s1, _ = train.train_step(_copy(state), batch)
    assert not np.allclose(jax.tree.leaves(s1.rest)[0], stats0)  # running statistics moved

    def scanned(s):
        return jax.lax.scan(lambda c, _: train._train_step(c, batch), s, length=3)

    s3, ms = jax.jit(scanned)(_copy(state))
    assert ms["loss"].shape == (3,) and int(s3.step) == 3
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    sv, mv = jax.jit(jax.vmap(train._train_step, in_axes=(0, None)))(stacked, batch)
    np.testing.assert_allclose(mv["loss"][0], mv["loss"][1], rtol=1e-6)
    ev = train.evaluate(s3, batch["image"], batch["label"])
    assert np.isfinite(ev["loss"])


def test_learning_rate_sweeps_need_inject_hyperparams():
    state = train.TrainState.create(model.MLP((8,), rngs=nnx.Rngs(0)), optax.sgd(0.1))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        train.with_learning_rate(state, 0.2)
    swept = train.with_learning_rate(_state(), 0.05)
    assert float(swept.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.05)
