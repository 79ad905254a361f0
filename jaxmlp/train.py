"""The step level: the train state, the loss, ``train_step``, ``evaluate``, ``predict``.

Everything here is a pure function of one ``TrainState`` pytree. The state holds
any ``nnx.Module`` split into a static graph definition, its parameters and the
rest of its state (e.g. dropout RNG streams, batch statistics), plus any Optax
transformation and its state. Jitted code merges the module back inside the
trace, so the same step runs under ``jit``, ``lax.scan``, ``vmap`` and sharding.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jaxmlp.model import scale_images


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    The graph definition and the optimizer are static (part of the tree
    structure), so a jitted function compiles once per model/optimizer. Keep
    hyperparameters that vary between runs in the optimizer state
    (``optax.inject_hyperparams``) and states with different values share one
    compiled program and stack into an ensemble.
    """

    step: jax.Array  # () int32: updates applied so far
    params: nnx.State  # the module's nnx.Param variables
    rest: nnx.State  # its other variables (RNG streams, batch statistics); often empty
    opt_state: optax.OptState
    key: jax.Array  # () key: randomness inside the model, folded with the step each step
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation, *,
               key: jax.Array | None = None) -> "TrainState":
        """A state at step 0 for ``model`` (images (B, 28, 28) -> logits (B, 10)) and ``tx``.

        ``key`` drives randomness inside the model (dropout); default ``key(0)``.
        """
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        key = jax.random.key(0) if key is None else key
        return cls(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                   opt_state=tx.init(params), key=key, graphdef=graphdef, tx=tx)


# Forward pass, loss and metrics ---------------------------------------------

def _reseeded(rest: nnx.State, key: jax.Array) -> nnx.State:
    """``rest`` with every RNG stream restarted from ``key`` (one fold per stream name).

    Done on the state, before merging; a model without streams gets its ``rest``
    back untouched (no work at all).
    """
    flat = list(nnx.to_flat_state(rest))
    tags = sorted({v.tag for _, v in flat if isinstance(v, nnx.RngKey)})
    if not tags:
        return rest
    fresh = []
    for path, v in flat:
        if isinstance(v, nnx.RngKey):
            v = v.replace(value=jax.random.fold_in(key, tags.index(v.tag)))
        elif isinstance(v, nnx.RngCount):
            v = v.replace(value=jnp.zeros_like(v[...]))
        fresh.append((path, v))
    return nnx.from_flat_state(fresh)


def forward(state: TrainState, params, images: jax.Array, *, train: bool,
            key: jax.Array | None = None) -> tuple[jax.Array, nnx.State]:
    """Logits (B, 10) of images (B, 28, 28) and the module's updated non-parameter state.

    ``train=True`` runs the module in training mode with every RNG stream restarted
    from ``key``; ``train=False`` runs it deterministically (``Module.eval``).
    """
    rest = _reseeded(state.rest, key) if train else state.rest
    # Fresh variables (``copy``): the state's belong to the trace that passed it in, and a
    # module that updates its own state (BatchNorm's statistics) inside ``value_and_grad``
    # may not mutate those ("Cannot mutate BatchStat from a different trace level").
    module = nnx.merge(state.graphdef, params, rest, copy=True)
    module.train() if train else module.eval()
    logits = module(scale_images(images))
    return logits, nnx.state(module, nnx.Not(nnx.Param))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, (B, 10), (B,) -> (B,); stable (log-softmax based)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _metrics(logits: jax.Array, labels: jax.Array) -> dict:
    return {"loss": cross_entropy(logits, labels).mean(),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def _train_step(state: TrainState, batch: dict, *, metrics: str = "before") -> tuple[TrainState, dict]:
    """One update on ``batch`` = {'image': (B, 28, 28), 'label': (B,)} of the batch-mean loss.

    ``metrics``: the minibatch's mean cross-entropy and accuracy taken with the
    parameters ``'before'`` the update (from the training forward pass, dropout
    included: free) or ``'after'`` it (a second, deterministic forward pass, as
    the 2017 program's ``sess.run([accuracy, cross_entropy])`` after its train op).
    """
    images, labels = batch["image"], batch["label"]
    key = jax.random.fold_in(state.key, state.step)  # identical after resume, per member

    def loss_fn(params):
        logits, rest = forward(state, params, images, train=True, key=key)
        return cross_entropy(logits, labels).mean(), (logits, rest)

    (_, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        rest=rest, opt_state=opt_state)
    if metrics == "after":
        logits = forward(new, new.params, images, train=False)[0]
    return new, _metrics(logits, labels)


train_step = jax.jit(_train_step, static_argnames="metrics", donate_argnums=0)
train_step.__doc__ = _train_step.__doc__ + "\n    Jitted; the input state is donated (do not reuse it)."


def _evaluate(state: TrainState, images: jax.Array, labels: jax.Array, *,
              batch_size: int = 10_000, predictions: bool = False) -> dict:
    """Mean loss and accuracy of the model in ``state`` over **every** example; with
    ``predictions``, also 'predicted' (N,) int32: the classes the accuracy counted.

    images (N, 28, 28), labels (N,). Runs deterministically in fixed batches of
    ``min(batch_size, N)``; the last batch is padded and masked, so no example is
    dropped and the shape never changes.
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
        logits = forward(state, state.params, x, train=False)[0]
        loss = jnp.sum(jnp.where(m, cross_entropy(logits, y), 0.0))
        predicted = jnp.argmax(logits, -1).astype(jnp.int32)
        correct = jnp.sum(m & (predicted == y))
        return (totals[0] + loss, totals[1] + correct), predicted if predictions else None

    split = lambda a: a.reshape(num_batches, b, *a.shape[1:])
    (loss, correct), predicted = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)),
        (split(images), split(labels), split(mask)))
    out = {"loss": loss / n, "accuracy": correct.astype(jnp.float32) / n}
    return {**out, "predicted": predicted.reshape(-1)[:n]} if predictions else out


evaluate = jax.jit(_evaluate, static_argnames=("batch_size", "predictions"))


@jax.jit
def predict(state: TrainState, images: jax.Array) -> jax.Array:
    """Predicted classes (B,) int32 of images (B, 28, 28), deterministic."""
    return jnp.argmax(forward(state, state.params, images, train=False)[0], -1).astype(jnp.int32)


def misclassified(state: TrainState, images: np.ndarray, labels: np.ndarray, *, limit: int = 40,
                  batch_size: int = 10_000) -> dict[str, Any]:
    """Up to ``limit`` misclassified images of a single model: image, predicted, label."""
    state = jax.device_get(state)  # a host copy: this runs on one process's device only
    preds = np.concatenate([np.asarray(predict(state, images[i:i + batch_size]))
                            for i in range(0, len(images), batch_size)])
    return pick_misclassified(preds, images, labels, limit=limit)


def pick_misclassified(predicted: np.ndarray, images: np.ndarray, labels: np.ndarray, *,
                       limit: int = 40) -> dict[str, Any]:
    """The first ``limit`` examples whose ``predicted`` class (N,) is not their label."""
    predicted = np.asarray(predicted)
    wrong = np.flatnonzero(predicted != np.asarray(labels))[:limit]
    return {"image": np.asarray(images)[wrong], "predicted": predicted[wrong].astype(np.int32),
            "label": np.asarray(labels)[wrong].astype(np.int32)}


# Learning rate as state ------------------------------------------------------

def learning_rate_of(state: TrainState) -> jax.Array:
    """The ``learning_rate`` hyperparameter (for schedules: the peak) of the state's optimizer."""
    return state.opt_state.hyperparams["learning_rate"]


def with_learning_rate(state: TrainState, learning_rate) -> TrainState:
    """``state`` with its optimizer's ``learning_rate`` hyperparameter set (may be traced).

    Needs ``optax.inject_hyperparams``; the value replaces the one given at creation.
    """
    hyper = getattr(state.opt_state, "hyperparams", None)
    if hyper is None or "learning_rate" not in hyper:
        raise ValueError("learning-rate sweeps need an optimizer built with "
                         "optax.inject_hyperparams(...)(learning_rate=...)")
    hyper = {**hyper, "learning_rate": jnp.asarray(learning_rate, hyper["learning_rate"].dtype)}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


@functools.cache
def optimizer(name: str = "sgd", decay_steps: int = 0, lr_min: float = 0.0
              ) -> optax.GradientTransformation:
    """SGD or Adam whose ``learning_rate`` hyperparameter is state (the decay's peak).

    lr(step) = lr_min + (learning_rate - lr_min) * exp(-step / decay_steps), or constant
    when ``decay_steps`` is 0. Cached: states built here share one static optimizer,
    so they stack into ensembles and reuse one compiled program whatever their rate.
    """
    base = {"sgd": optax.sgd, "adam": optax.adam}[name]
    if not decay_steps:
        return optax.inject_hyperparams(base)(learning_rate=0.0)  # the real lr is set per state

    def decayed(learning_rate):
        return base(lambda count: lr_min + (learning_rate - lr_min) * jnp.exp(-count / decay_steps))

    return optax.inject_hyperparams(decayed)(learning_rate=0.0)
