"""The loop level: train metrics before or after the update, learning-rate sweeps with a
schedule, shared batches for one-seed sweeps, and the divergence guard."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import device_data, first_nonfinite_by_replay, synthetic

from jaxmlp import loop, run, train
from jaxmlp.config import Config

DATA = synthetic()
EPS = 1e-8  # Adam's


def _device_data(ds=DATA) -> loop.Data:
    return device_data(ds)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _leaves(tree, member=None):
    """Every leaf (of one ``member``) as a host array; keys as their data."""
    tree = jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                        else x, tree)
    return [np.asarray(x if member is None else x[member]) for x in jax.tree.leaves(jax.device_get(tree))]


# Train metrics before or after the update ---------------------------------------------


def test_after_metrics_change_only_the_train_record():
    """With dropout: the same test history, percentiles and parameters, bit for bit, whichever
    train metrics are recorded; only the train record differs. Catches an 'after' variant
    that feeds back into training (e.g. re-applies the update, or keeps the model state of
    its extra forward pass)."""
    c = Config.from_preset("relu-lrdecay-dropout", hidden=(32, 16), batch_size=50, steps=60,
                           eval_every=20, log_every=20)
    before = run.train_and_evaluate(c, dataset=DATA, quiet=True)
    after = run.train_and_evaluate(c.replace(train_metrics="after"), dataset=DATA, quiet=True)
    for k in ("test_loss", "test_accuracy", "weight_percentiles", "bias_percentiles"):
        np.testing.assert_array_equal(after.history[k], before.history[k], err_msg=k)
    for a, b in zip(_leaves(after.state.params), _leaves(before.state.params)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(after.history["train_loss"], before.history["train_loss"])
    # After the update, without dropout: the minibatch just fitted scores better on average.
    assert np.mean(after.history["train_loss"]) < np.mean(before.history["train_loss"])


# Learning-rate sweeps with a schedule ---------------------------------------------------


def _lr_per_update(state, num_updates: int) -> np.ndarray:
    """(K, num_updates): each member's learning rate at each Adam update, read off its
    optimizer: a constant gradient of 1 makes m-hat = v-hat = 1, so update t = -lr(t)/(1+eps)."""
    def member(opt_state, params):
        ones = jax.tree.map(jnp.ones_like, params)

        def body(opt, _):
            u, opt = state.tx.update(ones, opt, params)
            return opt, -jax.tree.leaves(u)[0].ravel()[0] * (1 + EPS)

        return jax.lax.scan(body, opt_state, length=num_updates)[1]

    return np.asarray(jax.jit(jax.vmap(member))(state.opt_state, state.params), np.float64)


def test_a_learning_rate_sweep_decays_each_member_from_its_own_peak():
    """Member i: lr(t) = lr_min + (peak_i - lr_min) exp(-t / decay). Catches a sweep that
    scales the whole schedule (floor included), keeps the config's peak for every member,
    or gives every member member 0's rate."""
    peaks = (0.003, 0.001, 0.0005)
    c = Config.from_preset("relu-lrdecay", hidden=(4,), lr_decay_steps=20, learning_rates=peaks,
                           steps=100, eval_every=100, log_every=100)
    state, _, _ = loop.init_run(c, 1000)
    np.testing.assert_allclose(train.learning_rate_of(state), peaks, rtol=1e-7)
    lr = _lr_per_update(state, 61)
    t = np.arange(61)
    want = c.lr_min + (np.asarray(peaks)[:, None] - c.lr_min) * np.exp(-t / 20)
    np.testing.assert_allclose(lr, want, rtol=3e-5)  # Adam's float32 bias correction: ~1e-5


# Shared batches ---------------------------------------------------------------------------

SWEEP = Config(hidden=(32, 16), batch_size=50, steps=100, eval_every=20, log_every=20,
               lr_decay_steps=5, lr_min=0.01, learning_rates=(0.05, 0.2, 0.5))
"""One seed, three peaks of an SGD decay: the members share their batches."""


def test_shared_batches_equal_repeated_orders_and_single_runs():
    """One gather for every member gives what each member gathering the same batch gives, and
    what the single run with its peak gives. Catches the shared path taking another step's
    batch, or applying member 0's learning rate to all."""
    assert SWEEP.shares_batches
    data = _device_data()
    state, _, orders = loop.init_run(SWEEP, 1000)
    k = len(SWEEP.members)
    assert orders.ndim == 2  # (E, N): no model axis
    repeated = jnp.broadcast_to(orders, (k, *orders.shape))
    for n, rtol in ((1, 1e-6), (10, 1e-5)):
        shared, ms = loop.run_steps(_copy(state), data, orders, num_steps=n, batch_size=50,
                                    shared_batches=True)
        apart, ma = loop.run_steps(_copy(state), data, repeated, num_steps=n, batch_size=50)
        np.testing.assert_allclose(ms["loss"], ma["loss"], rtol=rtol)
        np.testing.assert_allclose(ms["accuracy"], ma["accuracy"], atol=1 / 50 + 1e-6)
        for a, b in zip(_leaves(shared.params), _leaves(apart.params)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol / 10)
    assert not np.allclose(ms["loss"][0], ms["loss"][2])  # the peaks do differ
    for i, (seed, lr) in enumerate(SWEEP.members):
        one = SWEEP.replace(learning_rates=(), seed=seed, learning_rate=lr)
        s1, _, o1 = loop.init_run(one, 1000)
        np.testing.assert_array_equal(o1, orders)  # the same data order
        s1, m1 = loop.run_steps(s1, data, o1, num_steps=10, batch_size=50)
        np.testing.assert_allclose(ms["loss"][i, :5], m1["loss"][:5], rtol=1e-5)
        for a, b in zip(_leaves(shared.params, i), _leaves(s1.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_shared_batches_gather_each_batch_once_for_every_member():
    """The program gathers one (B, 28, 28) batch of images per step, not one per member.
    Catches a shared path that broadcasts the order and gathers K copies (the same numbers,
    so the test above cannot tell)."""
    data = _device_data()
    state, _, orders = loop.init_run(SWEEP, 1000)
    k, b = len(SWEEP.members), SWEEP.batch_size
    image = "x".join(map(str, data.train_images.shape[1:]))

    def gathers(orders, shared):
        text = jax.jit(loop._run_steps, static_argnames=loop._RUN_STATIC).lower(
            state, data, orders, num_steps=3, batch_size=b, shared_batches=shared).as_text()
        return re.findall(rf"gather.*-> tensor<([0-9x]*)x{image}xui8>", text)

    assert gathers(orders, True) == [f"{b}"]
    assert gathers(jnp.broadcast_to(orders, (k, *orders.shape)), False) == [f"{k}x{b}"]


# The divergence guard --------------------------------------------------------------------

GUARDED = Config(hidden=(200, 100, 60, 30), batch_size=50, steps=60, eval_every=20, log_every=20)
BAD_LR = 3.0  # diverges at about step 9 of the first chunk on this data; 0.3 does not


@pytest.mark.parametrize("members", [{}, {"seeds": (0, 1, 2)}])
def test_unrolling_the_scan_changes_nothing(members):
    """``unroll`` only regroups the loop: the same states and metrics, bit for bit (XLA:CPU;
    ``bench.paths``' fused_unroll times it on other backends)."""
    config = Config(hidden=(32, 16), steps=100, **members)
    data = _device_data()
    state, _, orders = loop.init_run(config, len(DATA.train_labels))
    plain = loop.run_steps_keeping_input(state, data, orders, num_steps=21, batch_size=50)
    unrolled = loop.run_steps_keeping_input(state, data, orders, num_steps=21, batch_size=50, unroll=8)
    (s1, m1), (s2, m2) = plain, unrolled
    for a, b in zip(_leaves((s1.params, s1.step, m1)), _leaves((s2.params, s2.step, m2))):
        np.testing.assert_array_equal(a, b)
    assert int(np.max(s1.step)) == 21


def test_a_diverging_member_is_frozen_and_the_others_train_on():
    """The host loop's guard. Catches a guard that lets NaN parameters into the state (or a
    checkpoint), that keeps stepping the dead model, that marks the wrong steps, or that
    disturbs the healthy members (compared, bit for bit, with the same ensemble where the
    bad rate is replaced by a sane one: batched matmuls of another K could round otherwise)."""
    bad = run.train_and_evaluate(GUARDED.replace(learning_rates=(0.1, BAD_LR, 0.3)), dataset=DATA,
                                 quiet=True)
    sane = run.train_and_evaluate(GUARDED.replace(learning_rates=(0.1, 0.2, 0.3)), dataset=DATA,
                                  quiet=True)
    h = bad.history
    member = bad.summary["members"][1]
    assert [m["status"] for m in bad.summary["members"]] == ["complete", "diverged", "complete"]
    first = member["first_nonfinite_step"]
    # Where the member run alone, step by step and unguarded, first sees a non-finite loss.
    assert first == first_nonfinite_by_replay(GUARDED.replace(learning_rate=BAD_LR), DATA)
    losses = h["train_loss"][1]
    assert np.all(np.isfinite(losses[:first - 1])) and not np.any(np.isfinite(losses[first - 1:]))
    assert np.all(np.isnan(h["train_accuracy"][1, first - 1:]))
    assert np.all(np.isnan(h["test_accuracy"][1, 1:])) and np.isfinite(h["test_accuracy"][1, 0])
    # Frozen at the start of the chunk it diverged in (step 0): finite, its step stopped.
    start, _, _ = loop.init_run(GUARDED.replace(learning_rates=(0.1, BAD_LR, 0.3)), 1000)
    assert [int(s) for s in jax.device_get(bad.state.step)] == [60, 0, 60]
    for frozen, initial in zip(_leaves(bad.state.params, 1), _leaves(start.params, 1)):
        assert np.all(np.isfinite(frozen))
        np.testing.assert_array_equal(frozen, initial)
    # The healthy members are untouched by their neighbour's divergence.
    for i in (0, 2):
        for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_array_equal(h[k][i], sane.history[k][i], err_msg=f"{k} {i}")
        for a, b in zip(_leaves(bad.state.params, i), _leaves(sane.state.params, i)):
            np.testing.assert_array_equal(a, b)
    assert bad.summary["final_test_accuracy"][0] == pytest.approx(sane.summary["final_test_accuracy"][0])


# How the record program is compiled on CPU --------------------------------------------


def _lowered_record(state, history, data):
    metrics = loop.nan_metrics(20)
    return loop.record.lower(state, state, history, metrics, data, eval_every=20,
                             eval_batch_size=64)


def _ynn_fusions(compiled) -> int:
    return compiled.as_text().count('"kind":"__ynn_fusion"')


def test_record_is_compiled_without_ynnpack_fusions_on_cpu_with_the_same_results():
    """On CPU the record program opts out of YNNPACK fusions (faster on the 10k test set)
    and scores the same; elsewhere it compiles plainly."""
    c = Config(hidden=(32, 16), batch_size=50, steps=20, eval_every=20)
    data = _device_data()
    state, history, _ = loop.init_run(c, len(DATA.train_labels))
    lowered = _lowered_record(state, history, data)
    plain = lowered.compile()
    try:
        lowered.compile(compiler_options=loop.RECORD_CPU_OPTIONS)
    except jax.errors.JaxRuntimeError:
        pytest.skip("this XLA has no YNNPACK fusion option")
    if not _ynn_fusions(plain):
        pytest.skip("this XLA fuses nothing into YNNPACK here: nothing to opt out of")
    ours = loop.compile_record(lowered, "cpu")
    assert _ynn_fusions(ours) == 0
    assert _ynn_fusions(loop.compile_record(lowered, "gpu")) == _ynn_fusions(plain)  # untouched
    reports = [f(_copy(state), state, _copy(history), loop.nan_metrics(20), data)[2]
               for f in (plain, ours)]
    for k in ("test_loss", "test_accuracy", "weight_percentiles", "bias_percentiles"):
        np.testing.assert_allclose(reports[1][k], reports[0][k], rtol=1e-6, err_msg=k)


def test_record_compiles_plainly_where_xla_lacks_the_option(monkeypatch):
    """An XLA without the option (it is experimental) must not stop a run."""
    monkeypatch.setattr(loop, "RECORD_CPU_OPTIONS", {"xla_cpu_jaxmlp_no_such_option": ""})
    c = Config(hidden=(32, 16), batch_size=50, steps=20, eval_every=20)
    data = _device_data()
    state, history, _ = loop.init_run(c, len(DATA.train_labels))
    lowered = _lowered_record(state, history, data)
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_jaxmlp_no_such_option"):
        lowered.compile(compiler_options=loop.RECORD_CPU_OPTIONS)  # the premise
    report = loop.compile_record(lowered, "cpu")(_copy(state), state, _copy(history),
                                                 loop.nan_metrics(20), data)[2]
    assert np.isfinite(report["test_loss"])


@pytest.mark.parametrize("config", [Config(), Config(seeds=(0, 1, 2)), Config(learning_rates=(0.1, 0.3)),
                                    Config.from_preset("relu-lrdecay-dropout"),
                                    Config.from_preset("relu", optimizer="adam")],
                         ids=["seed", "seeds", "learning-rates", "dropout", "adam"])
def test_the_initial_state_compiled_at_a_low_llvm_level_has_the_same_bits(config):
    """``start_run`` compiles ``init_run`` with ``INIT_CPU_OPTIONS`` on CPU (faster to
    compile cold): the state, history and data order must be bit-identical to the default
    compile's, at the real dataset's size. Catches an XLA whose lower level rounds an
    initializer differently (level 0 does here)."""
    lowered = loop.init_run.lower(config, 60_000)
    try:
        low = lowered.compile(compiler_options=loop.INIT_CPU_OPTIONS)
    except jax.errors.JaxRuntimeError:
        pytest.skip("this XLA has no such option; start_run compiles plainly")
    want, got = _leaves(lowered.compile()()), _leaves(low())
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def test_start_run_compiles_with_the_init_options_on_cpu_only(monkeypatch):
    seen = []
    compile_for = loop.compile_for
    monkeypatch.setattr(loop, "compile_for", lambda lowered, platform, options: (
        seen.append((platform, options)), compile_for(lowered, platform, options))[1])
    c = Config(hidden=(32, 16), batch_size=50, steps=20, eval_every=20)
    state, _, _ = loop.start_run(c, 1000)
    assert seen == [(jax.default_backend(), loop.INIT_CPU_OPTIONS)] and int(state.step) == 0
    loop.start_run(c, 1000)  # compiled once per (config, size, platform)
    assert len(seen) == 1


    class Lowered:  # records how it was compiled
        def compile(self, **kwargs):
            return kwargs

    assert loop.compile_for(Lowered(), "gpu", loop.INIT_CPU_OPTIONS) == {}  # elsewhere: plainly
    assert loop.compile_for(Lowered(), "cpu", loop.INIT_CPU_OPTIONS) == {"compiler_options": loop.INIT_CPU_OPTIONS}
