"""Histories: a run's metrics as one pytree of arrays, built by pure functions.

A history is a dict of arrays with fixed shapes for the whole run, allocated
once (``empty``) and filled inside the compiled loop (``write_train``,
``write_eval``), so it can be donated, carried through ``lax.scan``, stacked by
``vmap`` (ensembles add a leading model axis) and sharded like any other
pytree. Nothing is appended to a Python list.

Keys (T = steps, E = evaluations = steps / eval_every + 1, L = layers, P = percentiles):
  train_step (T,) int32         1..T
  train_loss, train_accuracy (T,) float32   minibatch metrics of each step (before its update)
  test_step (E,) int32          0, eval_every, ..., T (step 0 is the initial model)
  test_loss, test_accuracy (E,) float32     over the whole test set
  percentiles (P,) float32      the percentile levels below
  weight_percentiles, bias_percentiles (E, L, P) float32   per-layer parameter distribution
Entries not yet reached are NaN. An ensemble of K models has a leading K axis on
every key but train_step, test_step and percentiles.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import model

PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0)
SHARED_KEYS = ("train_step", "test_step", "percentiles")  # never gain a model axis


def empty(num_steps: int, eval_every: int, num_layers: int) -> dict:
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


MAX_SAMPLES = 16_384  # values per layer that percentiles are taken over


def _percentiles(x: jax.Array, q: jax.Array) -> jax.Array:
    # Sorting is slow on XLA:CPU (the 157k first-layer weights took longer than scoring the
    # test set), so big layers use a fixed strided sample: exact for up to MAX_SAMPLES
    # values, a close estimate beyond. Min and max always come from every value.
    stride = -(-x.size // MAX_SAMPLES)
    while math.gcd(stride, x.shape[-1]) != 1:  # coprime with the row length: every unit is sampled
        stride += 1
    x = x.ravel()
    p = jnp.percentile(x[::stride], q)
    return p.at[0].set(x.min()).at[-1].set(x.max())


def param_percentiles(params) -> tuple[jax.Array, jax.Array]:
    """Percentiles (``PERCENTILES``, first 0, last 100) of each layer's kernel and bias
    values: two (L, P) arrays."""
    q = jnp.asarray(PERCENTILES, jnp.float32)
    layers = model.layer_params(params)
    w = jnp.stack([_percentiles(k, q) for k, _ in layers])
    b = jnp.stack([_percentiles(v, q) for _, v in layers])
    return w, b


# Host-side functions: numpy in, numpy out.

def to_numpy(history: dict, *, copy: bool = True) -> dict:
    """Host arrays (writable copies unless ``copy=False``); shared keys lose the model
    axis a vmapped ensemble gave them."""
    out = {k: np.array(v) if copy else np.asarray(v) for k, v in history.items()}
    for k in SHARED_KEYS:
        if k in out and out[k].ndim > 1:
            out[k] = out[k][0]
    return out


def truncate(history: dict, steps: int) -> dict:
    """The part of a history covering steps 1..``steps`` (and evaluations at <= steps)."""
    h = to_numpy(history)
    n_eval = int(np.searchsorted(h["test_step"], steps, side="right"))
    out = {}
    for k, v in h.items():
        if k in ("percentiles",):
            out[k] = v
        elif k.startswith("train_"):
            out[k] = v[..., :steps] if k != "train_step" else v[:steps]
        elif k in ("weight_percentiles", "bias_percentiles"):
            out[k] = v[..., :n_eval, :, :]
        else:  # test_*
            out[k] = v[..., :n_eval]
    return out


def concat(a: dict, b: dict) -> dict:
    """Join two consecutive histories (``b`` continues ``a``) along their step axes."""
    out = {"percentiles": np.asarray(a["percentiles"])}
    for k in a:
        if k == "percentiles":
            continue
        axis = -3 if k in ("weight_percentiles", "bias_percentiles") else -1
        out[k] = np.concatenate([np.asarray(a[k]), np.asarray(b[k])], axis=axis)
    return out


def completed_steps(history: dict) -> int:
    """Steps whose metrics are filled in (NaN loss from divergence still counts as run)."""
    h = to_numpy(history, copy=False)
    evaluated = ~np.isnan(h["test_accuracy"])
    if evaluated.ndim > 1:
        evaluated = evaluated.all(axis=tuple(range(evaluated.ndim - 1)))
    return int(h["test_step"][evaluated].max()) if evaluated.any() else 0


def first_nonfinite_step(history: dict) -> int | None:
    """The first training step whose loss was not finite, or None. NaN padding is ignored
    by looking only at steps already run."""
    h = to_numpy(history, copy=False)
    done = completed_steps(h)
    loss = h["train_loss"][..., :done]
    bad = ~np.isfinite(loss)
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(bad.ndim - 1)))
    idx = np.flatnonzero(bad)
    return int(h["train_step"][idx[0]]) if idx.size else None


def summarize(history: dict) -> dict:
    """Final and best test metrics of a (host) history; ensembles are reported per member."""
    h = to_numpy(history, copy=False)
    done = completed_steps(h)
    n_eval = int(np.searchsorted(h["test_step"], done, side="right"))
    acc, loss, steps = h["test_accuracy"][..., :n_eval], h["test_loss"][..., :n_eval], h["test_step"][:n_eval]
    best = np.nanargmax(np.where(np.isnan(acc), -np.inf, acc), axis=-1)
    tolist = lambda x: np.asarray(x).tolist()
    return {
        "steps": done,
        "final_test_accuracy": tolist(acc[..., -1]),
        "final_test_loss": tolist(loss[..., -1]),
        "best_test_accuracy": tolist(np.take_along_axis(acc, best[..., None], -1)[..., 0]),
        "best_test_step": tolist(steps[best]),
    }
