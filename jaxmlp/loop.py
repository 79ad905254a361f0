"""The loop level: data order, fused runs of steps, recording into the history, and
the run's initial state, for one model or an ensemble (a leading model axis).

Everything here is a pure function of pytrees, jitted at module level; the host
loop that calls them is ``jaxmlp.run``. A member whose loss or parameters turn
non-finite during a chunk goes back to that chunk's start and is marked dead
(``record``): from its first bad step on its losses are +inf and its other
metrics NaN, and the other members train on. No state, and so no checkpoint,
holds non-finite parameters.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import model, train
from jaxmlp.history import PERCENTILES


class Data(NamedTuple):
    """Device arrays: images (N, ...) as the data holds them, labels (N,) int32."""

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array


# Data order -------------------------------------------------------------------

def num_epochs(num_steps: int, batch_size: int, num_examples: int) -> int:
    """Epochs touched by ``num_steps`` steps; an epoch's last partial batch is skipped."""
    return math.ceil(num_steps / (num_examples // batch_size))


@functools.partial(jax.jit, static_argnames=("num_epochs", "num_examples"))
def epoch_orders(key: jax.Array, *, num_epochs: int, num_examples: int) -> jax.Array:
    """(num_epochs, N) int32: a fresh permutation of the training set per epoch, drawn
    once per run, so fetching a batch in the fused loop is a slice and a gather."""
    keys = jax.random.split(key, num_epochs)
    return jax.vmap(lambda k: jax.random.permutation(k, num_examples).astype(jnp.int32))(keys)


def batch_at(data: Data, orders: jax.Array, step: jax.Array, batch_size: int) -> dict:
    """The minibatch of global step ``step`` (0-based): images (B, ...), labels (B,)."""
    steps_per_epoch = data.train_images.shape[0] // batch_size
    epoch, i = step // steps_per_epoch, step % steps_per_epoch
    idx = jax.lax.dynamic_slice(orders, (epoch, i * batch_size), (1, batch_size))[0]
    return {"image": data.train_images[idx], "label": data.train_labels[idx]}


# Fused steps --------------------------------------------------------------------

def _run_steps(state, data, orders, *, num_steps: int, batch_size: int, batch_sharding=None,
               metrics: str = "before"):
    """``num_steps`` train steps fused by ``lax.scan``; metrics stacked to (num_steps,)
    ((K, num_steps) for an ensemble, ``orders`` then (K, E, N)), with 'step'
    (num_steps,): the step each belongs to."""
    ensemble = state.step.ndim == 1
    step = functools.partial(train._train_step, metrics=metrics)

    def body(carry, _):
        state, t = carry
        if ensemble:
            batches = jax.vmap(lambda o: batch_at(data, o, t, batch_size))(orders)
            state, m = jax.vmap(step)(state, batches)
        else:
            batch = batch_at(data, orders, t, batch_size)
            if batch_sharding is not None:  # data parallel: split the batch over devices
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            state, m = step(state, batch)
        return (state, t + 1), {**m, "step": t + 1}

    t0 = jnp.max(state.step)  # dead members keep stepping in place with the others
    (state, _), m = jax.lax.scan(body, (state, t0), length=num_steps)
    if ensemble:  # scan stacks on axis 0; histories keep the model axis first
        m = {k: v.T if k != "step" else v for k, v in m.items()}
    return state, m


_RUN_STATIC = ("num_steps", "batch_size", "batch_sharding", "metrics")
fused_steps = jax.jit(_run_steps, static_argnames=_RUN_STATIC)
"""``run_steps`` without its bounds check and without donation (``record`` needs the start)."""


def run_steps(state, data: Data, orders, *, num_steps: int, batch_size: int, **static):
    """``num_steps`` train steps in one program; see ``_run_steps``. Refuses, in one line,
    to run past the epochs ``orders`` holds (reads the state's step: a host sync)."""
    end = int(np.max(jax.device_get(state.step))) + num_steps
    covered = orders.shape[-2] * (data.train_images.shape[0] // batch_size)  # (K,) E, N
    if end > covered:
        raise ValueError(f"steps up to {end} need more epochs than the {orders.shape[-2]} in "
                         f"orders ({covered} steps); draw them with num_epochs(...) for {end} steps")
    return fused_steps(state, data, orders, num_steps=num_steps, batch_size=batch_size, **static)


# History --------------------------------------------------------------------------

MAX_SAMPLES = 1_024  # values per layer that percentiles are taken over


def _percentiles(x: jax.Array, q: jax.Array) -> jax.Array:
    # Sorting is slow on XLA:CPU; big layers use a fixed strided sample, exact up to
    # MAX_SAMPLES values and close beyond. Min and max come from every value.
    stride = -(-x.size // MAX_SAMPLES)
    while math.gcd(stride, x.shape[-1]) != 1:  # coprime with the row length: every unit sampled
        stride += 1
    x = x.ravel()
    p = jnp.quantile(x[::stride].astype(jnp.float32), q / 100)
    return p.at[0].set(x.min()).at[-1].set(x.max())


def param_percentiles(params) -> tuple[jax.Array, jax.Array]:
    """``PERCENTILES`` of each layer's kernel and bias values: two (L, P) arrays."""
    q = jnp.asarray(PERCENTILES, jnp.float32)
    layers = model.layer_params(params)
    if not layers:
        return jnp.zeros((0, len(PERCENTILES))), jnp.zeros((0, len(PERCENTILES)))
    return (jnp.stack([_percentiles(k, q) for k, _ in layers]),
            jnp.stack([_percentiles(b, q) for _, b in layers]))


def empty_history(state: train.TrainState, num_steps: int, eval_every: int) -> dict:
    """A history for one model over ``num_steps`` steps, every metric NaN."""
    num_evals = num_steps // eval_every + 1
    shape = (num_evals, len(model.layer_params(state.params)), len(PERCENTILES))
    nan = lambda *s: jnp.full(s, jnp.nan, jnp.float32)
    return {"train_step": jnp.arange(1, num_steps + 1, dtype=jnp.int32),
            "test_step": jnp.arange(num_evals, dtype=jnp.int32) * eval_every,
            **{f"train_{n}": nan(num_steps) for n in state.metric_names},
            **{f"test_{n}": nan(num_evals) for n in state.metric_names},
            "percentiles": jnp.asarray(PERCENTILES, jnp.float32),
            "weight_percentiles": nan(*shape), "bias_percentiles": nan(*shape)}


def nan_metrics(state: train.TrainState, num_steps: int) -> dict:
    """Placeholder metrics for ``record`` at step 0 (host arrays: nothing to compile)."""
    shape = state.step.shape + (num_steps,)
    return {**{n: np.full(shape, np.nan, np.float32) for n in state.metric_names},
            "step": np.zeros((num_steps,), np.int32)}


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _dead(m: dict, ok: jax.Array) -> dict:
    # NaN means "not run yet"; a dead model's entries have run: loss +inf, the rest NaN.
    return {k: jnp.where(ok, v.astype(jnp.float32), jnp.inf if k == "loss" else jnp.nan)
            for k, v in m.items()}


def _record(start, state, history, metrics, alive, data, *, eval_every: int, eval_batch_size: int):
    """After a chunk that took ``start`` to ``state`` with per-step ``metrics``: keep the
    state or, for a member that went non-finite (or was dead), its ``start``; store the
    metrics; score the whole test set. Returns (state, history, report): the report
    holds the few values the host reads ('alive', 'test_*', chunk-mean 'train_*', the
    percentiles, 'step', and for one model 'predicted' (N,), fetched only at the end).
    At step 0 pass ``start = state`` and ``nan_metrics``: the one program records it too.
    """
    end = metrics["step"][-1]
    ensemble = state.step.ndim == 1
    names = state.metric_names

    def one(start, state, history, m, alive):
        ran = end > 0
        finite = jnp.isfinite(m["loss"]) | ~ran  # (n,)
        ok = alive & jnp.all(finite) & _all_finite(state.params) & _all_finite(state.rest)
        n = finite.shape[0]
        first_bad = jnp.where(alive, jnp.where(jnp.all(finite), n, jnp.argmin(finite)), 0)
        m = _dead({k: m[k] for k in names}, ok | (jnp.arange(n) < first_bad))
        state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), state, start)
        test = train._evaluate(state, data.test_images, data.test_labels,
                               batch_size=eval_batch_size, predictions=not ensemble)
        predicted = test.pop("predicted", None)
        test = _dead(test, ok & ~jnp.isnan(test["loss"]))
        i = end // eval_every
        w, b = param_percentiles(state.params)
        put = lambda a, v: jax.lax.dynamic_update_slice(a, v.astype(a.dtype), (end - n,))
        at = lambda a, v: a.at[i].set(v.astype(a.dtype))
        history = {**history,
                   **{f"train_{k}": put(history[f"train_{k}"], m[k]) for k in names},
                   **{f"test_{k}": at(history[f"test_{k}"], test[k]) for k in names},
                   "weight_percentiles": at(history["weight_percentiles"], w),
                   "bias_percentiles": at(history["bias_percentiles"], b)}
        report = {"alive": ok, **{f"test_{k}": test[k] for k in names},
                  **{f"train_{k}": jnp.mean(m[k]) for k in names},
                  "weight_percentiles": w, "bias_percentiles": b}
        if predicted is not None:
            report["predicted"] = predicted
        return state, history, report

    m = {k: metrics[k] for k in names}  # 'step' is shared by every member
    state, history, report = (jax.vmap(one) if ensemble else one)(start, state, history, m, alive)
    return state, history, {**report, "step": end}


record = jax.jit(_record, static_argnames=("eval_every", "eval_batch_size"), donate_argnums=(1, 2))


# The initial state ------------------------------------------------------------------

Init = Callable[[jax.Array], train.TrainState]


def _member(init: Init, num_steps, eval_every, num_examples, batch_size, seed, lr):
    # One key per member, split at the top into a model key and a data-order key.
    model_key, data_key = jax.random.split(jax.random.key(seed))
    state = init(model_key)
    if lr is not None:
        state = train.with_learning_rate(state, lr)
    orders = epoch_orders(data_key, num_examples=num_examples,
                          num_epochs=num_epochs(num_steps, batch_size, num_examples))
    return state, empty_history(state, num_steps, eval_every), orders


@functools.partial(jax.jit, static_argnums=0, static_argnames=(
    "num_steps", "eval_every", "num_examples", "batch_size", "ensemble"))
def init_run(init: Init, seeds, learning_rates=None, *, num_steps: int, eval_every: int,
             num_examples: int, batch_size: int, ensemble: bool = False):
    """(state, history, orders) at step 0 for members with ``seeds`` (K,) and, for a sweep,
    ``learning_rates`` (K,) that replace the optimizer's. An ``ensemble`` gets a leading model
    axis on each; member i starts exactly as the single run with its seed and rate. Seeds
    and rates are traced: other values reuse the compiled program."""
    one = functools.partial(_member, init, num_steps, eval_every, num_examples, batch_size)
    seeds = jnp.asarray(seeds, jnp.uint32)
    if ensemble:
        return jax.vmap(one, in_axes=(0, None if learning_rates is None else 0))(seeds, learning_rates)
    return one(seeds[0], None if learning_rates is None else learning_rates[0])


def members(config) -> dict:
    """``init_run``'s member arguments for a Config: seeds, and the swept rates or None."""
    lrs = [lr for _, lr in config.members] if config.learning_rates else None
    return {"seeds": np.asarray([s for s, _ in config.members], np.uint32),
            "learning_rates": None if lrs is None else np.asarray(lrs, np.float32)}


MLP_FIELDS = ("hidden", "activation", "init_stddev", "bias_init", "dropout", "optimizer",
              "learning_rate", "lr_decay_steps", "lr_min")


def mlp_init(config, image_shape=(28, 28), num_classes: int = 10) -> Init:
    """The default ``init``: the MLP and optimizer a ``Config`` describes, at its learning
    rate. Configs that differ only outside ``MLP_FIELDS`` get the same function, so jit's
    caches hit."""
    fields = tuple((f, getattr(config, f)) for f in MLP_FIELDS)
    return _mlp_init_for(fields, tuple(image_shape), num_classes)


@functools.cache
def _mlp_init_for(fields, image_shape, num_classes) -> Init:
    return functools.partial(_mlp_init, types.SimpleNamespace(**dict(fields)), image_shape, num_classes)


def _mlp_init(config, image_shape, num_classes, key):
    init_key, model_key = jax.random.split(key)
    tx = train.optimizer(config.optimizer, config.lr_decay_steps, config.lr_min)
    net = model.from_config(config, init_key, image_shape=image_shape, num_classes=num_classes)
    state = train.TrainState.create(net, tx, key=model_key)
    return train.with_learning_rate(state, config.learning_rate)
