"""The step level: the train state, ``train_step``, ``evaluate``, ``predict``.

Everything here is a pure function of one ``TrainState`` pytree. The state holds
any ``nnx.Module`` split into a static graph definition, its parameters and the
rest of its state (RNG streams, batch statistics), any Optax transformation and
its state, and the loss and metrics as static functions. Jitted code merges the
module back inside the trace, so the same step runs under ``jit``, ``lax.scan``,
``vmap`` and sharding. The model sees the images exactly as the data holds them.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

PerExample = Callable[[jax.Array, jax.Array], jax.Array]  # (logits (B, C), labels (B,)) -> (B,)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy (B,): the default loss."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example 1.0 where the top logit is the label, else 0.0 (B,)."""
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    The graph definition, optimizer, loss and metrics are static (part of the tree
    structure), so a jitted function compiles once per model/optimizer. Keep
    hyperparameters that vary between runs in the optimizer state
    (``optax.inject_hyperparams``): such states share one program and stack into
    an ensemble.
    """

    step: jax.Array  # () int32: updates applied so far
    params: nnx.State  # the module's nnx.Param variables
    rest: nnx.State  # its other variables (RNG streams, batch statistics); often empty
    opt_state: optax.OptState
    key: jax.Array  # () key: randomness inside the model, folded with the step each step
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss: PerExample = struct.field(pytree_node=False, default=cross_entropy)
    metrics: tuple = struct.field(pytree_node=False, default=(("accuracy", accuracy),))

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation, *,
               key: jax.Array | None = None, loss: PerExample | None = None,
               metrics: dict[str, PerExample] | None = None) -> "TrainState":
        """A state at step 0 for ``model`` (images (B, ...) -> logits (B, C)) and ``tx``.

        ``loss(logits, labels) -> (B,)`` per-example losses (default: softmax
        cross-entropy); the step minimises their batch mean. ``metrics``:
        {name: fn(logits, labels) -> (B,)}, reported as means; 'accuracy' is always
        there. ``key`` drives randomness inside the model (dropout); default key(0).
        """
        metrics = {"accuracy": accuracy, **(metrics or {})}
        if "loss" in metrics:
            raise ValueError("'loss' is the loss's own name; give the metric another name")
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        return cls(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                   opt_state=tx.init(params), key=jax.random.key(0) if key is None else key,
                   graphdef=graphdef, tx=tx, loss=loss or cross_entropy,
                   metrics=tuple(metrics.items()))

    @property
    def metric_names(self) -> tuple[str, ...]:
        """'loss', then every metric: the names of ``train_step``'s and ``evaluate``'s values."""
        return ("loss", *(name for name, _ in self.metrics))


def _reseeded(rest: nnx.State, key: jax.Array) -> nnx.State:
    """``rest`` with every RNG stream restarted from ``key`` (one fold per stream name)."""
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
    """Logits of ``images`` and the module's updated non-parameter state.

    ``train=True`` runs the module in training mode with every RNG stream restarted
    from ``key``; ``train=False`` runs it deterministically (``Module.eval``).
    """
    rest = _reseeded(state.rest, key) if train else state.rest
    # Fresh variables (``copy``): a module that updates its own state (BatchNorm's
    # statistics) inside ``value_and_grad`` may not mutate the outer trace's.
    module = nnx.merge(state.graphdef, params, rest, copy=True)
    module.train() if train else module.eval()
    logits = module(images)
    return logits, nnx.state(module, nnx.Not(nnx.Param))


def per_example(state: TrainState, logits: jax.Array, labels: jax.Array) -> dict:
    """{'loss': (B,), metric: (B,) ...}; a function that does not give (B,) is refused."""
    out = {"loss": state.loss(logits, labels), **{n: fn(logits, labels) for n, fn in state.metrics}}
    for name, v in out.items():
        if jnp.shape(v) != labels.shape:
            raise ValueError(f"{name} must give one value per example, shape {labels.shape}; "
                             f"got shape {jnp.shape(v)}")
    return out


def _train_step(state: TrainState, batch: dict, *, metrics: str = "before") -> tuple[TrainState, dict]:
    """One update on ``batch`` = {'image': (B, ...), 'label': (B,)} of the batch-mean loss.

    Returns the new state and the minibatch's mean loss and metrics, taken with the
    parameters ``'before'`` the update (from the training forward pass: free) or
    ``'after'`` it (a second, deterministic pass, as the 2017 program measured).
    """
    images, labels = batch["image"], batch["label"]
    key = jax.random.fold_in(state.key, state.step)  # identical after a resume, per member

    def loss_fn(params):
        logits, rest = forward(state, params, images, train=True, key=key)
        return state.loss(logits, labels).mean(), (logits, rest)

    (_, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        rest=rest, opt_state=opt_state)
    if metrics == "after":
        logits = forward(new, new.params, images, train=False)[0]
    return new, {k: v.mean() for k, v in per_example(state, logits, labels).items()}


train_step = jax.jit(_train_step, static_argnames="metrics", donate_argnums=0)
train_step.__doc__ = _train_step.__doc__ + "\n    Jitted; the input state is donated (do not reuse it)."


def _evaluate(state: TrainState, images: jax.Array, labels: jax.Array, *,
              batch_size: int = 1_000, predictions: bool = False) -> dict:
    """Mean loss and metrics of the model in ``state`` over every example; with
    ``predictions``, also 'predicted' (N,) int32, the top class of each.

    images (N, ...), labels (N,). Deterministic, in fixed batches of
    ``min(batch_size, N)``; the last is padded and masked, so no example is dropped
    and no shape changes. An ensemble state (leading model axis) gives (K,) values.
    """
    if state.step.ndim == 1:
        one = functools.partial(_evaluate, images=images, labels=labels,
                                batch_size=batch_size, predictions=predictions)
        return jax.vmap(lambda s: one(s))(state)
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
        values = per_example(state, logits, y)
        totals = {k: totals[k] + jnp.sum(jnp.where(m, v, 0.0), dtype=jnp.float32)
                  for k, v in values.items()}
        return totals, jnp.argmax(logits, -1).astype(jnp.int32) if predictions else None

    split = lambda a: a.reshape(num_batches, b, *a.shape[1:])
    zeros = {k: jnp.zeros((), jnp.float32) for k in state.metric_names}
    totals, predicted = jax.lax.scan(body, zeros, (split(images), split(labels), split(mask)))
    out = {k: v / n for k, v in totals.items()}
    return {**out, "predicted": predicted.reshape(-1)[:n]} if predictions else out


evaluate = jax.jit(_evaluate, static_argnames=("batch_size", "predictions"))


@jax.jit
def predict(state: TrainState, images: jax.Array) -> jax.Array:
    """Predicted classes (B,) int32 of images (B, ...), deterministic."""
    return jnp.argmax(forward(state, state.params, images, train=False)[0], -1).astype(jnp.int32)


def with_learning_rate(state: TrainState, learning_rate) -> TrainState:
    """``state`` with its optimizer's ``learning_rate`` hyperparameter set (may be traced).

    Needs ``optax.inject_hyperparams``; the value replaces the one given at creation.
    """
    hyper = getattr(state.opt_state, "hyperparams", None)
    if not isinstance(hyper, dict) or "learning_rate" not in hyper:
        raise ValueError("a learning-rate sweep needs an optimizer built with "
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
