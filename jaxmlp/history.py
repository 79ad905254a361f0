"""Histories: the layout of a run's metrics and every host-side reader (numpy only).

A history is a dict of arrays with fixed shapes for the whole run, filled inside
the compiled loop (``jaxmlp.loop``) and read here, so redrawing figures from saved
records never imports JAX. For one model (T steps, E = T / eval_every + 1
evaluations, L layers, P percentile levels):

  train_step (T,) int32            1..T
  train_<metric> (T,) float32      minibatch metrics of each step: loss, accuracy, yours
  test_step (E,) int32             0, eval_every, ..., T (step 0 is the initial model)
  test_<metric> (E,) float32       over the whole test set
  percentiles (P,) float32         the levels ``PERCENTILES``
  weight_percentiles, bias_percentiles (E, L, P) float32   per-layer parameter spread
  members (K,) str                 optional names of an ensemble's members

Entries not yet reached are NaN; a diverged model's losses are +inf from its first
bad step (its other metrics NaN). An ensemble of K models has a leading K axis on
every key but the shared ones (the two step keys, percentiles, members).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0)
SHARED = {"train_step": 1, "test_step": 1, "percentiles": 1, "members": 1}  # key -> its ndim


def ndim(key: str) -> int:
    """The number of axes of ``key`` for one model."""
    if key in SHARED:
        return SHARED[key]
    return 3 if key.endswith("_percentiles") else 1


def time_of(key: str) -> str | None:
    """"train" (one entry per step), "test" (one per evaluation) or None."""
    if key.endswith("_percentiles"):
        return "test"
    kind = key.split("_", 1)[0]
    return kind if kind in ("train", "test") and key != "percentiles" else None


def metric_names(history: dict, kind: str = "test") -> list[str]:
    """The metrics recorded for ``kind``: loss, accuracy, then any others in key order."""
    names = [k[len(kind) + 1:] for k in history if k.startswith(kind + "_") and k != f"{kind}_step"]
    first = [n for n in ("loss", "accuracy") if n in names]
    return first + [n for n in names if n not in first]


def to_numpy(history: dict) -> dict:
    """Writable host copies; shared keys lose the model axis an ensemble's vmap broadcast on."""
    out = {}
    for k, v in history.items():
        v = np.array(v)
        if k in SHARED and v.ndim > SHARED[k]:
            v = v[(0,) * (v.ndim - SHARED[k])]
        out[k] = v
    return out


def by_member(history: dict, key: str) -> np.ndarray:
    """``history[key]`` as (K, *axes): K = 1 for a single model."""
    v = np.asarray(history[key])
    n = ndim(key)
    return v.reshape(-1, *v.shape[v.ndim - n:])


def num_members(history: dict) -> int:
    return by_member(history, "train_loss").shape[0]


def is_ensemble(history: dict) -> bool:
    return np.ndim(history["train_loss"]) > 1


def member_names(history: dict) -> list[str]:
    """The names in ``members``, else "model 0", "model 1", ..."""
    k = num_members(history)
    names = [str(m) for m in np.asarray(history.get("members", [])).reshape(-1)]
    return names if len(names) == k else [f"model {i}" for i in range(k)]


def series(history: dict, kind: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps (N,), values (K, N) float64) of ``{kind}_{metric}``."""
    values = by_member(history, f"{kind}_{metric}").astype(np.float64)
    steps = np.asarray(history[f"{kind}_step"]).reshape(-1)[-values.shape[-1]:]
    return steps, values


def nan_reduce(fn, values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``fn`` (``np.nanmean`` & co.) without the warning for all-NaN slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(values, axis=axis)


def _evaluations_run(history: dict) -> int:
    """Evaluations run so far: up to the last one any member has a test loss for."""
    _, loss = series(history, "test", "loss")
    ran = np.flatnonzero(~np.isnan(loss).all(axis=0))
    return int(ran[-1]) + 1 if ran.size else 0


def completed_steps(history: dict) -> int:
    """The step of the last evaluation that has run (0 if none)."""
    n = _evaluations_run(history)
    return int(np.asarray(history["test_step"]).reshape(-1)[n - 1]) if n else 0


def truncate(history: dict, steps: int) -> dict:
    """The part covering steps 1..``steps`` and the evaluations at <= ``steps``."""
    h = to_numpy(history)
    n = {"train": steps, "test": int(np.searchsorted(h["test_step"], steps, side="right"))}
    out = {}
    for k, v in h.items():
        t = time_of(k)
        if t is None:
            out[k] = v
        else:
            axis = v.ndim - ndim(k)  # the time axis follows the model axis, if any
            out[k] = v[(slice(None),) * axis + (slice(0, n[t]),)]
    return out


def first_nonfinite_steps(history: dict) -> list[int | None]:
    """Per member, the first step whose train or test loss is not finite, among what has run."""
    done, n_eval = completed_steps(history), _evaluations_run(history)
    first = np.full(num_members(history), np.inf)
    for kind, ran in (("train", lambda s: s <= done), ("test", lambda s: np.arange(s.size) < n_eval)):
        steps, loss = series(history, kind, "loss")
        bad = ~np.isfinite(loss) & ran(steps)
        first = np.minimum(first, np.where(bad.any(axis=1), steps[np.argmax(bad, axis=1)], np.inf))
    return [None if math.isinf(s) else int(s) for s in first]


def summarize(history: dict) -> dict:
    """summary.json's metrics: numbers for a single model, lists (one per member) for an ensemble.

    "best" is the evaluation with the highest test accuracy before the member diverged,
    an optimistic pick, since it is chosen on the test set itself.
    """
    n = _evaluations_run(history)
    steps, acc = series(history, "test", "accuracy")
    _, loss = series(history, "test", "loss")
    k = acc.shape[0]
    if n == 0:
        final, final_loss, best, best_step = [math.nan] * k, [math.nan] * k, [math.nan] * k, [0] * k
    else:
        steps, acc, loss = steps[:n], acc[:, :n], loss[:, :n]
        i = np.argmax(np.where(np.isnan(acc), -np.inf, acc), axis=1)  # NaN never wins
        final, final_loss = acc[:, -1].tolist(), loss[:, -1].tolist()
        best, best_step = acc[np.arange(k), i].tolist(), steps[i].astype(int).tolist()
    pick = (lambda v: v) if is_ensemble(history) else (lambda v: v[0])
    return {"steps": completed_steps(history), "final_test_accuracy": pick(final),
            "final_test_loss": pick(final_loss), "best_test_accuracy": pick(best),
            "best_test_step": pick(best_step)}
