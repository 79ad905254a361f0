"""Training core: state, loss, the pure step, evaluation and the fused chunk.

Everything here is a pure function of pytrees. The one public step,
``train_step(state, batch) -> (state, metrics)``, is jitted with the old state
donated; ``run_steps`` fuses any number of steps with ``lax.scan`` (per-step metrics
come back stacked), and ``record`` writes them and a full test evaluation into
the preallocated history. ``ensemble_*`` are the same functions vmapped over a
leading model axis.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jaxmlp import history as hist
from jaxmlp import model
from jaxmlp.config import Config


@struct.dataclass
class TrainState:
    """One pytree with everything that changes during training.

    The graph definition and the optimizer are static (part of the tree
    structure), so a jitted function compiles once per model/optimizer. The
    learning rate lives in ``opt_state`` (``optax.inject_hyperparams``), so
    states with different learning rates share one compiled program and can
    be stacked into an ensemble.
    """

    step: jax.Array  # () int32: updates applied so far
    params: nnx.State  # the MLP's parameters
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


class Data(NamedTuple):
    """Both splits as device arrays: images (N, 28, 28) uint8 or float32 in [0, 1], labels (N,) int32."""

    train_images: jax.Array
    train_labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array


@functools.cache
def sgd() -> optax.GradientTransformation:
    """Plain SGD with the learning rate kept in the optimizer state.

    One cached object, so every state built here has the same static
    optimizer: states compare equal in structure, stack into ensembles and
    reuse one compiled program whatever their learning rate.
    """
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)  # the real lr is set per state


def init_params(key: jax.Array, config: Config):
    """(graphdef, params) of a fresh MLP drawn from ``key``."""
    return model.create(key, config.hidden, init_stddev=config.init_stddev)


def init_state(key: jax.Array, config: Config, *, learning_rate=None,
               tx: optax.GradientTransformation | None = None) -> TrainState:
    """A fresh state for one model.

    ``learning_rate`` (default ``config.learning_rate``) may be a traced scalar
    (ensembles). Pass ``tx`` to train with any other Optax transformation; it
    is then used as given.
    """
    graphdef, params = init_params(key, config)
    if tx is None:
        tx = sgd()
        opt_state = _with_learning_rate(tx.init(params), config.learning_rate
                                        if learning_rate is None else learning_rate)
    else:
        opt_state = tx.init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      graphdef=graphdef, tx=tx)


def init_ensemble(keys: jax.Array, learning_rates: jax.Array, config: Config) -> TrainState:
    """K states stacked on a leading axis: keys (K,), learning_rates (K,)."""
    graphdef = init_params(keys[0], config)[0]

    def one(key, lr):
        s = init_state(key, config, learning_rate=lr)
        return s.step, s.params, s.opt_state

    step, params, opt_state = jax.vmap(one)(keys, jnp.asarray(learning_rates, jnp.float32))
    return TrainState(step=step, params=params, opt_state=opt_state, graphdef=graphdef, tx=sgd())


def _with_learning_rate(opt_state, learning_rate):
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)


def learning_rate_of(state: TrainState) -> jax.Array:
    return state.opt_state.hyperparams["learning_rate"]


# Loss and metrics -----------------------------------------------------------

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, (B, 10), (B,) -> (B,); stable (log-softmax based)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss_fn(params, graphdef, images, labels):
    """Mean cross-entropy over the batch, and the logits."""
    logits = model.apply(graphdef, params, images)
    return cross_entropy(logits, labels).mean(), logits


def _train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One SGD update on ``batch`` = {'image': (B, 28, 28), 'label': (B,)}.

    Metrics are the minibatch's mean cross-entropy and accuracy under the
    parameters *before* the update, as in the original.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(state.params, state.graphdef, batch["image"], batch["label"])
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "accuracy": accuracy}


train_step = jax.jit(_train_step, donate_argnums=0)
train_step.__doc__ = _train_step.__doc__ + "\n    Jitted; the input state is donated (do not reuse it)."


def _evaluate(params, images, labels, *, graphdef, batch_size: int = 10_000) -> dict:
    """Mean loss and accuracy over **every** example: images (N, ...), labels (N,).

    Runs in fixed batches of ``min(batch_size, N)``; the last batch is padded and
    masked, so no example is dropped and the shape never changes.
    """
    n = images.shape[0]
    b = min(batch_size, n)
    num_batches = -(-n // b)
    pad = num_batches * b - n
    mask = jnp.arange(num_batches * b) < n
    images = jnp.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1))
    labels = jnp.pad(labels, (0, pad))

    def body(totals, xs):
        x, y, m = xs
        logits = model.apply(graphdef, params, x)
        loss = jnp.sum(jnp.where(m, cross_entropy(logits, y), 0.0))
        correct = jnp.sum(m & (jnp.argmax(logits, -1) == y))
        return (totals[0] + loss, totals[1] + correct), None

    split = lambda a: a.reshape(num_batches, b, *a.shape[1:])
    (loss, correct), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)),
        (split(images), split(labels), split(mask)))
    return {"loss": loss / n, "accuracy": correct.astype(jnp.float32) / n}


evaluate = jax.jit(_evaluate, static_argnames=("graphdef", "batch_size"))


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

def _run_steps(state, data, orders, *, num_steps: int, batch_size: int, batch_sharding=None):
    """``num_steps`` train steps fused by ``lax.scan``; metrics stacked to (num_steps,)."""

    def body(state, _):
        batch = batch_at(data, orders, state.step, batch_size)
        if batch_sharding is not None:  # data parallel: split the batch axis over devices
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return _train_step(state, batch)

    return jax.lax.scan(body, state, length=num_steps)


run_steps = jax.jit(_run_steps, static_argnames=("num_steps", "batch_size", "batch_sharding"),
                    donate_argnums=0)
run_steps.__doc__ = _run_steps.__doc__


def _evaluate_into(state, history, data, *, eval_every: int, eval_batch_size: int):
    """Score the test set with ``state`` and store it at evaluation ``state.step // eval_every``."""
    test = _evaluate(state.params, data.test_images, data.test_labels,
                     graphdef=state.graphdef, batch_size=eval_batch_size)
    return hist.write_eval(history, state.step // eval_every, test, state.params), test


def _record(state, history, metrics, data, *, eval_every: int, eval_batch_size: int):
    """After a run of steps ending at ``state.step``: store its per-step ``metrics``
    (n,), score the whole test set, and return the few scalars the host reads.

    Returns (history, report). At step 0, pass NaN ``metrics`` (``nan_metrics``):
    the write lands on the not-yet-run (NaN) steps, so one compiled program
    also records the initial evaluation.
    """
    start = state.step - metrics["loss"].shape[-1]
    history = hist.write_train(history, start, metrics)
    history, test = _evaluate_into(state, history, data, eval_every=eval_every,
                                   eval_batch_size=eval_batch_size)
    report = {"step": state.step, "test_loss": test["loss"], "test_accuracy": test["accuracy"],
              "finite": jnp.all(jnp.isfinite(metrics["loss"]))}
    return history, report


def nan_metrics(num_steps: int, num_models: int | None = None) -> dict:
    """Placeholder per-step metrics, for ``record`` at step 0."""
    shape = (num_steps,) if num_models is None else (num_models, num_steps)
    return {"loss": jnp.full(shape, jnp.nan, jnp.float32), "accuracy": jnp.full(shape, jnp.nan, jnp.float32)}


_EVAL_STATIC = ("eval_every", "eval_batch_size")
_RUN_STATIC = ("num_steps", "batch_size", "batch_sharding")

record = jax.jit(_record, static_argnames=_EVAL_STATIC, donate_argnums=1)


def _ensemble(fn, in_axes):
    """vmap ``fn`` over the leading model axis of the arguments marked 0 in ``in_axes``."""
    def wrapped(*args, **static):
        return jax.vmap(functools.partial(fn, **static), in_axes=in_axes)(*args)
    return wrapped


# The same functions for K models at once (state, history, orders and metrics carry a K axis).
ensemble_run_steps = jax.jit(_ensemble(_run_steps, (0, None, 0)),
                             static_argnames=_RUN_STATIC, donate_argnums=0)
ensemble_record = jax.jit(_ensemble(_record, (0, 0, 0, None)),
                          static_argnames=_EVAL_STATIC, donate_argnums=1)


def misclassified(state: TrainState, images: np.ndarray, labels: np.ndarray, *, limit: int = 40,
                  batch_size: int = 10_000) -> dict[str, Any]:
    """Up to ``limit`` misclassified test images of a single model: image, predicted, label."""
    params = jax.device_get(state.params)  # a host copy: this runs on one process's device only
    preds = np.concatenate([
        np.asarray(_predict(params, images[i:i + batch_size], graphdef=state.graphdef))
        for i in range(0, len(images), batch_size)])
    wrong = np.flatnonzero(preds != labels)[:limit]
    return {"image": np.asarray(images)[wrong], "predicted": preds[wrong].astype(np.int32),
            "label": np.asarray(labels)[wrong].astype(np.int32)}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(params, images, *, graphdef):
    return jnp.argmax(model.apply(graphdef, params, images), -1)
