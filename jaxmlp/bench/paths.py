"""The training paths the benchmark compares, each a zero-argument call that advances its state.

=================  ============================================================
``host_fed``       per step: numpy batch sliced on the host, fed to ``train_step``
``device_step``    per step: ``run_steps(num_steps=1)`` on device-resident data
``fused``          ``run_steps`` with many steps per call (``lax.scan``), uint8 data
``fused_f32``      the same on pre-scaled float32 data (is uint8 in the step slower?)
``fused_after``    ``fused`` with minibatch metrics after the update (the original's timing)
``fused_unroll``   ``fused`` with ``UNROLL`` steps per loop iteration (``lax.scan(unroll=)``)
``plain_jax``      hand-written reference: (W, b) list, ``jax.grad``, manual SGD,
                   ``lax.scan`` with the same batch sampling -- no abstraction
``nnx_jit``        idiomatic per-step ``nnx.jit`` + ``nnx.Optimizer`` loop
=================  ============================================================

and ensembles: K models in one ``run_steps`` call, built by
``loop.init_run`` from a ``Config`` with ``seeds=`` (K seeds, one learning
rate) or ``learning_rates=`` (one seed, K learning rates).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmlp import loop, model, parallel, train
from jaxmlp.bench.data import as_float32
from jaxmlp.config import Config

VARIANTS = ("host_fed", "device_step", "fused", "fused_f32", "fused_after", "fused_unroll",
            "plain_jax", "nnx_jit")
UNROLL = 8  # fused_unroll: does the loop's per-iteration cost matter on this backend?
LABELS = {
    "host_fed": "per-step, host-fed",
    "device_step": "per-step, device data",
    "fused": "fused scan (uint8)",
    "fused_f32": "fused scan (float32)",
    "fused_after": "fused, metrics after",
    "fused_unroll": f"fused, unrolled x{UNROLL}",
    "plain_jax": "plain-JAX scan",
    "nnx_jit": "nnx.jit per-step",
}
KINDS = ("seeds", "learning_rates")  # ensembles: K seeds at one lr, or one seed at K lrs


@dataclasses.dataclass
class Loop:
    call: Callable[[], Any]  # one call; returns arrays that are ready when the call is done
    steps_per_call: int
    models: int = 1


def _boxed(state, fn):
    """A call that threads a donated state through ``fn(state) -> (state, out)``."""
    box = [state]

    def call():
        box[0], out = fn(box[0])
        return out

    return call


# --- the plain-JAX reference -------------------------------------------------------


def reference_params(state: train.TrainState) -> list[tuple[jax.Array, jax.Array]]:
    """A jaxmlp state's parameters as the reference's [(W (in, out), b (out,)), ...] (copies)."""
    return [(jnp.array(w), jnp.array(b)) for w, b in model.layer_params(state.params)]


def _reference_loss(params, images, labels):
    x = images.reshape(images.shape[0], -1)
    x = x.astype(jnp.float32) * (1.0 / 255.0) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    logits = x @ params[-1][0] + params[-1][1]
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1)), logits


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"), donate_argnums=0)
def reference_run_steps(carry, images, labels, orders, learning_rate, *, num_steps: int,
                        batch_size: int):
    """The whole fused loop in plain JAX: carry = (params list, step () int32).

    images (N, 28, 28), labels (N,), orders (E, N) int32: the same sampling as
    ``loop.batch_at``. Returns (carry, {'loss', 'accuracy'} stacked (num_steps,)).
    """
    steps_per_epoch = images.shape[0] // batch_size

    def body(carry, _):
        params, step = carry
        start = (step // steps_per_epoch, (step % steps_per_epoch) * batch_size)
        idx = jax.lax.dynamic_slice(orders, start, (1, batch_size))[0]
        x, y = images[idx], labels[idx]
        (loss, logits), grads = jax.value_and_grad(_reference_loss, has_aux=True)(params, x, y)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return (params, step + 1), {"loss": loss, "accuracy": accuracy}

    return jax.lax.scan(body, carry, length=num_steps)


# --- single-model paths ------------------------------------------------------------


def make_loop(variant: str, state: train.TrainState, *, host: dict, data: loop.Data,
              orders: jax.Array, batch_size: int, scan_steps: int) -> Loop:
    """The timed loop of ``variant`` (one of ``VARIANTS``), starting from ``state`` (consumed)."""
    if variant == "host_fed":
        images, labels, order_rows = host["train_images"], host["train_labels"], np.asarray(orders)
        per_epoch, step = host["train_images"].shape[0] // batch_size, [0]

        def host_step(state):
            epoch, i = divmod(step[0], per_epoch)
            idx = order_rows[min(epoch, len(order_rows) - 1), i * batch_size:(i + 1) * batch_size]
            step[0] += 1
            # numpy in, so every call pays the host gather and the host->device copy.
            return train.train_step(state, {"image": images[idx], "label": labels[idx]})

        return Loop(_boxed(state, host_step), 1)
    if variant in ("device_step", "fused", "fused_f32", "fused_after", "fused_unroll"):
        steps = 1 if variant == "device_step" else scan_steps
        d = as_float32(data) if variant == "fused_f32" else data
        metrics = "after" if variant == "fused_after" else "before"
        unroll = UNROLL if variant == "fused_unroll" else 1
        return Loop(_boxed(state, lambda s: loop.run_steps(
            s, d, orders, num_steps=steps, batch_size=batch_size, metrics=metrics,
            unroll=unroll)), steps)
    if variant == "plain_jax":
        carry = (reference_params(state), jnp.zeros((), jnp.int32))
        lr = train.learning_rate_of(state)
        return Loop(_boxed(carry, lambda c: reference_run_steps(
            c, data.train_images, data.train_labels, orders, lr,
            num_steps=scan_steps, batch_size=batch_size)), scan_steps)
    if variant == "nnx_jit":
        return Loop(_nnx_call(state, data, orders, batch_size), 1)
    raise ValueError(f"unknown variant {variant!r}")


def _nnx_call(state: train.TrainState, data: loop.Data, orders: jax.Array, batch_size: int):
    """The loop Flax's NNX examples teach: a stateful module and optimizer under ``nnx.jit``.

    Same model, parameters, loss and device-resident batch sampling as jaxmlp;
    what differs is NNX's per-call graph handling and no donation.
    """
    mlp = nnx.merge(state.graphdef, state.params, state.rest)  # an ordinary stateful nnx.Module
    optimizer = nnx.Optimizer(mlp, optax.sgd(float(train.learning_rate_of(state))), wrt=nnx.Param)

    @nnx.jit
    def step(mlp, optimizer, data, orders):
        batch = loop.batch_at(data, orders, optimizer.step[...].astype(jnp.int32), batch_size)

        def loss_fn(mlp):
            logits = mlp(model.scale_images(batch["image"]))
            return train.cross_entropy(logits, batch["label"]).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(mlp)
        optimizer.update(mlp, grads)
        return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    return lambda: step(mlp, optimizer, data, orders)


# --- ensembles ---------------------------------------------------------------------------


def ensemble_config(kind: str, k: int, base: Config, *, num_examples: int) -> Config:
    """``base`` as an ensemble of ``k`` members of ``kind`` (one of ``KINDS``).

    Learning rates spread geometrically over [lr / 10, lr], all stable for the
    seed network. Steps are two epochs (``two_epochs``).
    """
    if kind == "seeds":
        return two_epochs(base, num_examples).replace(seeds=tuple(range(k)), learning_rates=())
    if kind == "learning_rates":
        lrs = tuple(float(base.learning_rate * f) for f in np.geomspace(0.1, 1.0, k))
        return two_epochs(base, num_examples).replace(seeds=(), learning_rates=lrs)
    raise ValueError(f"unknown ensemble kind {kind!r}; known: {', '.join(KINDS)}")


def two_epochs(config: Config, num_examples: int) -> Config:
    """``config`` with a two-epoch schedule, so ``init_run`` draws two epochs of data order
    per member; past them ``batch_at`` keeps reusing the last, which timing does not mind."""
    steps = 2 * (num_examples // config.batch_size)
    return config.replace(steps=steps, eval_every=steps, log_every=steps, checkpoint_every=0)


def make_ensemble_loop(config: Config, *, data: loop.Data, scan_steps: int, devices=None) -> Loop:
    """The members of ensemble ``config`` (``ensemble_config``) trained in one fused call each;
    with ``devices``, split over them as a run would (``parallel.plan``)."""
    state, history, orders = loop.init_run(config, data.train_images.shape[0])
    del history  # the timed loop records nothing
    if devices is not None:
        placement = parallel.plan(config.batch_size, len(config.members), devices)
        data, state = placement.put_replicated(data), placement.put_state(state)
        orders = (placement.put_replicated if config.shares_batches else placement.put_state)(orders)
    return Loop(_boxed(state, lambda s: loop.run_steps(
        s, data, orders, num_steps=scan_steps, batch_size=config.batch_size,
        shared_batches=config.shares_batches)), scan_steps, models=len(config.members))


def one_step_program(config: Config, *, data: loop.Data):
    """One train step of ``config``'s model(s) on given batches, compiled, for XLA's cost
    analysis. Batches are inputs: a gather would count the whole array it reads from."""
    state = jax.eval_shape(loop.init_run, config, data.train_images.shape[0])[0]
    b = config.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, *data.train_images.shape[1:]), data.train_images.dtype),
             "label": jax.ShapeDtypeStruct((b,), data.train_labels.dtype)}
    step = train._train_step
    if config.is_ensemble and config.shares_batches:
        step = jax.vmap(step, in_axes=(0, None))
    elif config.is_ensemble:
        step = jax.vmap(step)
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((len(config.members), *a.shape), a.dtype),
                             batch)
    return jax.jit(step, donate_argnums=0).lower(state, batch).compile()
