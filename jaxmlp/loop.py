"""The loop level: data order, fused runs of steps, evaluation into the history,
the run's initial state, and the ensemble versions of each.

Everything here is a pure function of pytrees, jitted at module level; the host
loop that calls them lives in ``jaxmlp.run``. The history's device-side writers
live here too, since they run inside these compiled programs (its schema and
host-side readers are ``jaxmlp.history``).

A member whose loss or parameters turn non-finite during a chunk goes back to
that chunk's start with learning rate 0 (``record``): from its first bad step
on its losses are +inf and its accuracies NaN, and the other members of an
ensemble train on. So no state, and no checkpoint, holds non-finite parameters.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import model, train
from jaxmlp.config import Config
from jaxmlp.history import PERCENTILES


class Data(NamedTuple):
    """Both splits as device arrays: images (N, 28, 28) uint8 or float32 in [0, 1], labels (N,) int32."""

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array


# History writers (device side) ---------------------------------------------

def empty_history(num_steps: int, eval_every: int, num_layers: int) -> dict:
    """A history for a run of ``num_steps`` steps, every metric NaN."""
    num_evals = num_steps // eval_every + 1
    nan = lambda *shape: jnp.full(shape, jnp.nan, jnp.float32)
    p = len(PERCENTILES)
    return {
        "train_step": jnp.arange(1, num_steps + 1, dtype=jnp.int32),
        "train_loss": nan(num_steps),
        "train_accuracy": nan(num_steps),
        "test_step": jnp.arange(num_evals, dtype=jnp.int32) * eval_every,
        "test_loss": nan(num_evals),
        "test_accuracy": nan(num_evals),
        "percentiles": jnp.asarray(PERCENTILES, jnp.float32),
        "weight_percentiles": nan(num_evals, num_layers, p),
        "bias_percentiles": nan(num_evals, num_layers, p),
    }


def write_train(history: dict, start: jax.Array, metrics: dict) -> dict:
    """Store per-step ``metrics`` {'loss','accuracy'}: (n,) for steps start+1 .. start+n."""
    put = lambda a, v: jax.lax.dynamic_update_slice(a, v.astype(a.dtype), (start,))
    return {**history,
            "train_loss": put(history["train_loss"], metrics["loss"]),
            "train_accuracy": put(history["train_accuracy"], metrics["accuracy"])}


def write_eval(history: dict, index: jax.Array, test: dict, params) -> dict:
    """Store test metrics and parameter percentiles at evaluation ``index``."""
    w, b = param_percentiles(params)
    at = lambda a, v: a.at[index].set(v.astype(a.dtype))
    return {**history,
            "test_loss": at(history["test_loss"], test["loss"]),
            "test_accuracy": at(history["test_accuracy"], test["accuracy"]),
            "weight_percentiles": at(history["weight_percentiles"], w),
            "bias_percentiles": at(history["bias_percentiles"], b)}


MAX_SAMPLES = 4_096  # values per layer that percentiles are taken over


def sort_floats(x: jax.Array) -> jax.Array:
    """Finite float32 values (n,) sorted ascending, through an order-preserving map to uint32.

    XLA:CPU sorts plain unsigned integers on a fast path and floats through a generic
    comparator: 4,096 values take 0.17 ms instead of 0.75 ms (measured here). Negative
    floats map to the bitwise complement (larger magnitude, smaller key), the others
    get the sign bit set; the map is undone after the sort.
    """
    u = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    sign = jnp.uint32(0x80000000)
    u = jnp.sort(jnp.where(u & sign, ~u, u | sign))
    return jax.lax.bitcast_convert_type(jnp.where(u & sign, u & ~sign, ~u), jnp.float32)


def _percentiles(x: jax.Array, q: jax.Array) -> jax.Array:
    # XLA:CPU's sort grows much faster than n log n (measured with floats: 1k values 0.2 ms,
    # 4k 1.5 ms, 16k 13 ms), so big layers use a fixed strided sample: exact for up to
    # MAX_SAMPLES values, a close estimate beyond (rank error ~1/sqrt(MAX_SAMPLES)). Min
    # and max always come from every value.
    stride = -(-x.size // MAX_SAMPLES)
    while math.gcd(stride, x.shape[-1]) != 1:  # coprime with the row length: every unit is sampled
        stride += 1
    x = x.ravel()
    s = sort_floats(x[::stride])
    pos = q / 100 * (s.shape[0] - 1)  # linear interpolation between order statistics, as numpy's
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, s.shape[0] - 1)
    p = s[lo] + (s[hi] - s[lo]) * (pos - lo)
    return p.at[0].set(x.min()).at[-1].set(x.max())


def param_percentiles(params) -> tuple[jax.Array, jax.Array]:
    """Percentiles (``PERCENTILES``, first 0, last 100) of each layer's kernel and bias
    values: two (L, P) arrays."""
    q = jnp.asarray(PERCENTILES, jnp.float32)
    layers = model.layer_params(params)
    w = jnp.stack([_percentiles(k, q) for k, _ in layers])
    b = jnp.stack([_percentiles(v, q) for _, v in layers])
    return w, b


# Data order -------------------------------------------------------------------

def num_epochs(num_steps: int, batch_size: int, num_examples: int) -> int:
    """Epochs touched by ``num_steps`` steps; the last partial batch of an epoch is skipped."""
    steps_per_epoch = num_examples // batch_size
    return math.ceil(num_steps / steps_per_epoch)


@functools.partial(jax.jit, static_argnames=("num_epochs", "num_examples"))
def epoch_orders(key: jax.Array, *, num_epochs: int, num_examples: int) -> jax.Array:
    """(num_epochs, N) int32: a fresh permutation of the training set for each epoch.

    Drawn once per run on the device (4 bytes per example seen), so fetching a
    batch inside the fused loop is a slice and a gather, never a sort.
    """
    keys = jax.random.split(key, num_epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples).astype(jnp.int32))(keys)


def batch_at(data: Data, orders: jax.Array, step: jax.Array, batch_size: int) -> dict:
    """The minibatch of global step ``step`` (0-based): images (B, ...), labels (B,).

    ``orders`` must cover the step's epoch (``num_epochs`` sizes it); past its end
    ``dynamic_slice`` would clamp to the last epoch's order.
    """
    steps_per_epoch = data.train_images.shape[0] // batch_size
    epoch, i = step // steps_per_epoch, step % steps_per_epoch
    idx = jax.lax.dynamic_slice(orders, (epoch, i * batch_size), (1, batch_size))[0]
    return {"image": data.train_images[idx], "label": data.train_labels[idx]}


# Fused loops ----------------------------------------------------------------

def _run_steps(state, data, orders, *, num_steps: int, batch_size: int, batch_sharding=None,
               metrics: str = "before", shared_batches: bool = False, unroll: int = 1):
    """``num_steps`` train steps fused by ``lax.scan``; metrics stacked to (num_steps,)
    ((K, num_steps) for an ensemble), with 'step' (num_steps,): the step each belongs to.

    ``state`` may carry a leading model axis K (an ensemble), then ``orders`` is
    (K, E, N), or (E, N) with ``shared_batches``: every member then trains on the same
    batch, gathered once, so the first layer is one wide matmul. ``unroll``: steps
    per loop iteration (``lax.scan``'s; on CPU the results are bit-identical, tested).
    """
    ensemble = state.step.ndim == 1
    step = functools.partial(train._train_step, metrics=metrics)

    def body(carry, _):
        state, t = carry
        if not ensemble:
            batch = batch_at(data, orders, t, batch_size)
            if batch_sharding is not None:  # data parallel: split the batch axis over devices
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            state, m = step(state, batch)
        elif shared_batches:
            state, m = jax.vmap(step, in_axes=(0, None))(state, batch_at(data, orders, t, batch_size))
        else:
            batches = jax.vmap(lambda o: batch_at(data, o, t, batch_size))(orders)
            state, m = jax.vmap(step)(state, batches)
        return (state, t + 1), {**m, "step": t + 1}

    # The run's step; members frozen by ``record`` (lr 0) keep stepping in place.
    t0 = jnp.max(state.step)
    (state, _), m = jax.lax.scan(body, (state, t0), length=num_steps, unroll=unroll)
    if ensemble:  # scan stacks on axis 0; histories keep the model axis first
        m = {k: v.T if k != "step" else v for k, v in m.items()}
    return state, m


_RUN_STATIC = ("num_steps", "batch_size", "batch_sharding", "metrics", "shared_batches", "unroll")
run_steps = jax.jit(_run_steps, static_argnames=_RUN_STATIC, donate_argnums=0)
run_steps.__doc__ = _run_steps.__doc__ + "\n    Jitted; the input state is donated."
run_steps_keeping_input = jax.jit(_run_steps, static_argnames=_RUN_STATIC)
"""``run_steps`` without donation: the host loop keeps each chunk's start for ``record``."""


# Divergence guard and recording ------------------------------------------------

def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def is_alive(state: train.TrainState) -> jax.Array:
    """False once ``record`` froze the model (its learning rate set to 0)."""
    hyper = getattr(state.opt_state, "hyperparams", {})
    return hyper["learning_rate"] > 0 if "learning_rate" in hyper else jnp.bool_(True)


def _mark_dead(m: dict, ok: jax.Array) -> dict:
    # NaN in a history means "not run yet"; a dead model's entries have run, so its loss
    # is +inf (non-finite: diverged) and its accuracy NaN (no model to score).
    return {"loss": jnp.where(ok, m["loss"].astype(jnp.float32), jnp.inf),
            "accuracy": jnp.where(ok, m["accuracy"].astype(jnp.float32), jnp.nan)}


def _guard(start, state, metrics, ran):
    """One model's chunk: (state, metrics, ok). If a loss or a parameter went non-finite
    (or the model was frozen already), the state goes back to the chunk's ``start`` with
    learning rate 0, so it never holds non-finite values, and its metrics are marked
    dead from the first non-finite loss on."""
    finite = jnp.isfinite(metrics["loss"]) | ~ran  # (n,); NaN placeholders at step 0 are fine
    ok = is_alive(start) & jnp.all(finite) & _all_finite(state.params)
    n = finite.shape[0]
    first_bad = jnp.where(is_alive(start), jnp.where(jnp.all(finite), n - 1, jnp.argmin(finite)), 0)
    metrics = _mark_dead(metrics, ok | (jnp.arange(n) < first_bad))
    frozen = start if "learning_rate" not in getattr(start.opt_state, "hyperparams", {}) \
        else train.with_learning_rate(start, 0.0)
    state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), state, frozen)
    return state, metrics, ok


def _record(start, state, history, metrics, data, *, eval_every: int, eval_batch_size: int):
    """After a chunk that took ``start`` to ``state`` with per-step ``metrics`` ((n,) or
    (K, n), with 'step' (n,)): guard against divergence (``_guard``), store the metrics,
    score the whole test set, and return the few scalars the host reads.

    Returns (state, history, report). For a single model the report also holds
    'predicted' (N,): each test image's class, for the misclassified digits (the host
    fetches it once, at the end). At step 0, pass ``start = state`` and
    ``nan_metrics``: the write lands on the not-yet-run (NaN) steps, so one compiled
    program also records the initial evaluation.
    """
    end = metrics["step"][-1]
    n = metrics["loss"].shape[-1]
    ensemble = state.step.ndim == 1
    m = {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
    evaluate = functools.partial(train._evaluate, batch_size=eval_batch_size,
                                 predictions=not ensemble)

    def one(start, state, history, m):
        state, m, ok = _guard(start, state, m, end > 0)
        test = evaluate(state, data.test_images, data.test_labels)
        predicted = test.get("predicted")
        test = _mark_dead(test, ok & ~jnp.isnan(test["loss"]))  # NaN would read as "not run"
        i = end // eval_every
        history = write_eval(write_train(history, end - n, m), i, test, state.params)
        return state, history, {"alive": ok, "test_loss": test["loss"],
                                "test_accuracy": test["accuracy"],
                                # For live charts: the chunk's mean train metrics and the
                                # percentiles just written, (L, P): a few numbers more per chunk.
                                "train_loss": jnp.mean(m["loss"]),
                                "train_accuracy": jnp.mean(m["accuracy"]),
                                "weight_percentiles": history["weight_percentiles"][i],
                                "bias_percentiles": history["bias_percentiles"][i],
                                **({} if predicted is None else {"predicted": predicted})}

    state, history, report = (jax.vmap(one) if ensemble else one)(start, state, history, m)
    return state, history, {**report, "step": end}


copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
"""Fresh buffers for every leaf, in one program (for a program that donates its input)."""

_EVAL_STATIC = ("eval_every", "eval_batch_size")
record = jax.jit(_record, static_argnames=_EVAL_STATIC, donate_argnums=(0, 2))


@jax.jit
def guard(start, state, metrics):
    """``record``'s guard alone: the state ``record`` returns, without scoring the test set.

    The next chunk can start from it at once while ``record`` scores this one (on a
    device of its own, where the run has one); both compute the same selects on the
    same arrays, so the states are bit-identical (tested).
    """
    ran = metrics["step"][-1] > 0
    one = lambda start, state, loss: _guard(start, state, {"loss": loss, "accuracy": loss}, ran)[0]
    return (jax.vmap(one) if state.step.ndim == 1 else one)(start, state, metrics["loss"])

# XLA:CPU (jax 0.10) hands the evaluation's reductions and elementwise ops to YNNPACK;
# on the 10k test set its own loops are faster: 18.8 against 22.7 ms per ``record``
# (measured here, median of 8). Training steps measured the same either way.
RECORD_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# ``init_run`` runs once per run, so only its compile time counts: with LLVM at level 1
# instead of XLA's default 3 it compiled cold in 1.6 s instead of 2.3 (the seed run) and
# 1.2 s instead of 4.2 (three seeds), measured here, and gave the same bits (tested).
INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def compile_for(lowered: jax.stages.Lowered, platform: str, cpu_options: dict) -> jax.stages.Compiled:
    """Compile ``lowered`` with ``cpu_options`` on CPU where this XLA has them, plainly
    elsewhere (the options' names are XLA's, and may go)."""
    if platform == "cpu":
        try:
            return lowered.compile(compiler_options=cpu_options)
        except jax.errors.JaxRuntimeError as e:
            if not any(k in str(e) for k in cpu_options):
                raise
    return lowered.compile()


def compile_record(lowered: jax.stages.Lowered, platform: str) -> jax.stages.Compiled:
    """Compile a lowered ``record``: on CPU without YNNPACK fusions (``RECORD_CPU_OPTIONS``)."""
    return compile_for(lowered, platform, RECORD_CPU_OPTIONS)


def nan_metrics(num_steps: int, num_models: int | None = None) -> dict:
    """Placeholder metrics for ``record`` at step 0 (host arrays: ``jnp.full`` would
    compile two programs for them, 0.1 s of a warm start)."""
    shape = (num_steps,) if num_models is None else (num_models, num_steps)
    nan = np.full(shape, np.nan, np.float32)
    return {"loss": nan, "accuracy": nan, "step": np.zeros((num_steps,), np.int32)}


# The run's initial state ---------------------------------------------------------

def init_state(key: jax.Array, config: Config, *, learning_rate=None) -> train.TrainState:
    """A fresh state for the model and optimizer ``config`` describes.

    ``key`` is split into init and model (dropout) keys. ``learning_rate``
    (default ``config.learning_rate``; the peak of a decay) may be traced.
    """
    init_key, model_key = jax.random.split(key)
    tx = train.optimizer(config.optimizer, config.lr_decay_steps, config.lr_min)
    state = train.TrainState.create(model.from_config(config, init_key), tx, key=model_key)
    return train.with_learning_rate(state, config.learning_rate if learning_rate is None
                                    else learning_rate)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_run(config: Config, num_examples: int):
    """(state, history, orders) at step 0; ensembles get a leading model axis on each
    (but ``orders`` when the members share their batches: one seed).

    Each member's seed gives one key, split at the top into a model key and a
    data-order key, so member i of an ensemble starts exactly as the single run
    with its seed and learning rate (their trajectories then drift apart by float
    rounding: batched and single matmuls round differently).
    """
    members = config.members
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(
        jnp.asarray([s for s, _ in members], jnp.uint32))
    model_keys, data_keys = keys[:, 0], keys[:, 1]
    n_epochs = num_epochs(config.steps, config.batch_size, num_examples)
    draw = lambda k: epoch_orders(k, num_epochs=n_epochs, num_examples=num_examples)
    if not config.is_ensemble:
        state = init_state(model_keys[0], config)
        return state, _empty_for(state, config), draw(data_keys[0])
    lrs = jnp.asarray([lr for _, lr in members], jnp.float32)
    state = jax.vmap(lambda k, lr: init_state(k, config, learning_rate=lr))(model_keys, lrs)
    history = _empty_for(jax.tree.map(lambda x: x[0], state), config)
    # Every key gets the model axis, shared ones too, so the history is one vmappable carry
    # (``history.to_numpy`` drops it again from train_step, test_step and percentiles).
    history = jax.tree.map(lambda v: jnp.broadcast_to(v, (len(members), *v.shape)), history)
    orders = draw(data_keys[0]) if config.shares_batches else jax.vmap(draw)(data_keys)
    return state, history, orders


def start_run(config: Config, num_examples: int):
    """``init_run(config, num_examples)`` on the default device, compiled on CPU with
    ``INIT_CPU_OPTIONS``: the same arrays, sooner on a cold compilation cache."""
    return _compiled_init(config, num_examples, jax.default_backend())()


@functools.cache  # as jit keeps its executables: a second run of a config compiles nothing
def _compiled_init(config: Config, num_examples: int, platform: str) -> jax.stages.Compiled:
    return compile_for(init_run.lower(config, num_examples), platform, INIT_CPU_OPTIONS)


def _empty_for(state: train.TrainState, config: Config) -> dict:
    return empty_history(config.steps, config.eval_every, len(model.layer_params(state.params)))
