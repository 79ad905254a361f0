"""Histories: what a run's metrics are (``SCHEMA``) and every host-side reader.

A history is a dict of arrays with fixed shapes for the whole run. It is
allocated and filled inside the compiled loop by ``jaxmlp.loop`` (so it can be
donated, scanned, vmapped and sharded like any pytree); this module only reads
it, with numpy, so redrawing figures from saved records never imports JAX.

``SCHEMA`` is the one list of keys. Each key's axes, for one model
(T = steps, E = evaluations = steps / eval_every + 1, L = layers, P = percentiles):

  train_step (T,) int32         1..T
  train_loss, train_accuracy (T,) float32   minibatch metrics of each step (before its update)
  test_step (E,) int32          0, eval_every, ..., T (step 0 is the initial model)
  test_loss, test_accuracy (E,) float32     over the whole test set
  percentiles (P,) float32      the levels ``PERCENTILES``
  weight_percentiles, bias_percentiles (E, L, P) float32   per-layer parameter distribution
  members (K,) str              optional names of an ensemble's members

Entries not yet reached are NaN; a diverged model's losses are +inf from its
first bad step (its accuracies NaN). An ensemble of K models has a leading K axis
on every key but the shared ones (train_step, test_step, percentiles, members).
Every reader works on both: per-member results are lists of length K (1 for a
single model). Keys outside ``SCHEMA`` pass through the readers untouched.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0)
STEP, EVAL = "T", "E"  # the two time axes: one entry per train step, one per evaluation


class Key(NamedTuple):
    """The layout of one history array."""

    axes: tuple[str, ...]  # one model's shape, by axis name
    shared: bool = False  # the same for every member: never gains the model axis
    required: bool = True  # every saved history.npz holds it (older ones lack the others)

    @property
    def time(self) -> str | None:
        """``STEP``, ``EVAL`` or None (no time axis)."""
        return next((a for a in self.axes if a in (STEP, EVAL)), None)

    @property
    def time_axis(self) -> int | None:
        """The time axis counted from the end, where a leading model axis does not move it."""
        return None if self.time is None else self.axes.index(self.time) - len(self.axes)


SCHEMA: dict[str, Key] = {
    "train_step": Key((STEP,), shared=True, required=False),  # absent: counted from 1
    "train_loss": Key((STEP,)),
    "train_accuracy": Key((STEP,)),
    "test_step": Key((EVAL,), shared=True),
    "test_loss": Key((EVAL,)),
    "test_accuracy": Key((EVAL,)),
    "percentiles": Key(("P",), shared=True, required=False),
    "weight_percentiles": Key((EVAL, "L", "P"), required=False),
    "bias_percentiles": Key((EVAL, "L", "P"), required=False),
    "members": Key(("K",), shared=True, required=False),  # is the model axis, so never gains one
}

REQUIRED = tuple(k for k, key in SCHEMA.items() if key.required)
"""The arrays every history.npz holds, in schema order (``runs.load_run`` checks)."""


class FinalBest(NamedTuple):
    """One model's last and best evaluation (NaN at step 0 when none has run)."""

    final_step: int
    final_accuracy: float
    final_loss: float
    best_step: int
    best_accuracy: float


# --- layout -------------------------------------------------------------------


def to_numpy(history: dict, *, copy: bool = True) -> dict:
    """Host arrays (writable copies unless ``copy=False``); shared keys lose the model
    axis that vmapping an ensemble broadcast onto them."""
    out = {}
    for k, v in history.items():
        v = np.array(v) if copy else np.asarray(v)
        key = SCHEMA.get(k)
        if key is not None and key.shared and v.ndim > len(key.axes):
            v = v[(0,) * (v.ndim - len(key.axes))]  # every member holds the same copy
        out[k] = v
    return out


def by_member(history: dict, k: str) -> np.ndarray:
    """``history[k]`` as (K, *axes): K = 1 for a single model; shared keys take row 0."""
    v = np.asarray(history[k])
    n = len(SCHEMA[k].axes)
    return v.reshape(-1, *v.shape[v.ndim - n:])


def num_members(history: dict) -> int:
    """K for an ensemble, 1 for a single model."""
    return by_member(history, "train_loss").shape[0]


def is_ensemble(history: dict) -> bool:
    """Whether the history has a model axis (an ensemble of one has one too)."""
    return np.ndim(history["train_loss"]) > len(SCHEMA["train_loss"].axes)


def member_names(history: dict) -> list[str]:
    """The names in the optional ``members`` array, else "model 0", "model 1", ..."""
    k = num_members(history)
    names = [str(m) for m in np.asarray(history.get("members", [])).reshape(-1)]
    return names if len(names) == k else [f"model {i}" for i in range(k)]


def series(history: dict, kind: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps (N,), values (K, N) float64) of ``{kind}_{metric}``, kind "train" or "test"."""
    values = by_member(history, f"{kind}_{metric}").astype(np.float64)
    n = values.shape[-1]
    if f"{kind}_step" in history:
        steps = by_member(history, f"{kind}_step")[0]
    else:  # minimal histories: train steps count from 1, evaluations from 0
        steps = np.arange(1, n + 1) if kind == "train" else np.arange(n)
    # A history saved mid-write by an older writer could disagree by one entry; use the overlap.
    n = min(n, steps.shape[0])
    return steps[:n], values[:, :n]


def nan_reduce(fn, values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``fn`` (``np.nanmean`` & co.) without the warning for all-NaN slices: for a diverged
    ensemble, NaN is the right answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(values, axis=axis)


def last_step(history: dict) -> int:
    """The largest train or test step number (at least 1)."""
    steps = [series(history, kind, "loss")[0] for kind in ("train", "test")]
    return max([1] + [int(s.max()) for s in steps if s.size])


def finite_max(history: dict, metric: str) -> float:
    """The largest finite train or test value of ``metric`` (0 if there is none)."""
    values = np.concatenate([series(history, kind, metric)[1].ravel() for kind in ("train", "test")])
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


def late_test_values(history: dict, metric: str) -> np.ndarray:
    """The finite member-mean test values of the run's second half (by step)."""
    steps, values = series(history, "test", metric)
    if steps.size == 0:
        return np.zeros(0)
    late = nan_reduce(np.nanmean, values)[steps >= steps[-1] / 2]
    return late[np.isfinite(late)]


def percentile_means(history: dict, keys) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The parameter percentiles at each evaluation: (levels (P,) ascending, test steps (N,),
    {key: (N, L, P) float64} for each of ``keys``, e.g. "weight_percentiles"), the members'
    mean for an ensemble, over the evaluations that every one of these arrays holds."""
    levels = np.asarray(history["percentiles"], dtype=np.float64)
    order = np.argsort(levels)
    steps = by_member(history, "test_step")[0]
    means = {k: nan_reduce(np.nanmean, by_member(history, k).astype(np.float64))[..., order] for k in keys}
    n = min(steps.size, *(v.shape[0] for v in means.values()))
    return levels[order], steps[:n], {k: v[:n] for k, v in means.items()}


def _slice_time(v: np.ndarray, key: Key, n: int) -> np.ndarray:
    """The first ``n`` entries of ``v`` along the key's time axis."""
    return v[(..., slice(0, n)) + (slice(None),) * (-key.time_axis - 1)]


def truncate(history: dict, steps: int) -> dict:
    """The part of a history covering steps 1..``steps`` and the evaluations at <= ``steps``."""
    h = to_numpy(history)
    length = {STEP: steps, EVAL: int(np.searchsorted(by_member(h, "test_step")[0], steps, side="right"))}
    out = {}
    for k, v in h.items():
        key = SCHEMA.get(k)
        out[k] = v if key is None or key.time is None else _slice_time(v, key, length[key.time])
    return out


def concat(a: dict, b: dict) -> dict:
    """Join two consecutive histories (``b`` continues ``a``) along each key's time axis;
    keys without one are taken from ``a``."""
    out = {}
    for k, v in a.items():
        axis = SCHEMA[k].time_axis if k in SCHEMA else None
        out[k] = np.asarray(v) if axis is None else np.concatenate([v, b[k]], axis=axis)
    return out


# --- progress and divergence ----------------------------------------------------


def _evaluations_run(history: dict) -> int:
    """How many evaluations have run: up to the last one any member has a test loss for.

    Unreached entries are NaN; a diverged model's entries have run and hold a
    non-finite loss (``jaxmlp.loop`` writes +inf), so divergence never shortens this.
    """
    _, loss = series(history, "test", "loss")
    evaluated = np.flatnonzero(~np.isnan(loss).all(axis=0))
    return int(evaluated[-1]) + 1 if evaluated.size else 0


def completed_steps(history: dict) -> int:
    """Steps run so far: the step of the last evaluation that has run (0 if none)."""
    steps, _ = series(history, "test", "accuracy")
    n = _evaluations_run(history)
    return int(steps[n - 1]) if n else 0


def first_nonfinite_steps(history: dict) -> list[int | None]:
    """Per member, the first step whose loss is not finite, or None.

    The one rule every reader uses: the earlier of the first train step whose
    train loss is non-finite and the first evaluation whose test loss is, looking
    only at what has run (``completed_steps``). NaN marks entries not run yet;
    ``jaxmlp.loop`` writes a diverged model's losses as +inf.
    """
    done, n_eval = completed_steps(history), _evaluations_run(history)
    first = np.full(num_members(history), np.inf)
    for kind, ran in (("train", lambda steps: steps <= done),
                      ("test", lambda steps: np.arange(steps.size) < n_eval)):
        steps, loss = series(history, kind, "loss")
        bad = ~np.isfinite(loss) & ran(steps)
        first = np.minimum(first, np.where(bad.any(axis=1), steps[np.argmax(bad, axis=1)], np.inf))
    return [None if math.isinf(s) else int(s) for s in first]


def first_nonfinite_step(history: dict) -> int | None:
    """The first step at which any member's loss is not finite (``first_nonfinite_steps``)."""
    bad = [s for s in first_nonfinite_steps(history) if s is not None]
    return min(bad) if bad else None


def member_status(history: dict) -> list[str]:
    """Per member: "finite", or "diverged at step N" (``first_nonfinite_steps``)."""
    return ["finite" if s is None else f"diverged at step {s}" for s in first_nonfinite_steps(history)]


# --- results ----------------------------------------------------------------------


def final_and_best(history: dict) -> list[FinalBest]:
    """Per member: the last evaluation that has run, and the one with the best test accuracy."""
    n = _evaluations_run(history)
    steps, acc = series(history, "test", "accuracy")
    _, loss = series(history, "test", "loss")
    if n == 0:
        return [FinalBest(0, math.nan, math.nan, 0, math.nan)] * acc.shape[0]
    steps, acc, loss = steps[:n], acc[:, :n], loss[:, :n]
    best = np.argmax(np.where(np.isnan(acc), -np.inf, acc), axis=1)  # the first of equal bests
    return [FinalBest(int(steps[-1]), float(a[-1]), float(l[-1]), int(steps[i]), float(a[i]))
            for a, l, i in zip(acc, loss, best)]


def mean_final(history: dict, metric: str) -> float:
    """The members' mean of the last test ``metric`` ("accuracy" or "loss") that has run
    (``final_and_best``); NaN if none has, or if every member's is NaN."""
    finals = [r.final_accuracy if metric == "accuracy" else r.final_loss for r in final_and_best(history)]
    return float(nan_reduce(np.nanmean, np.asarray(finals)))


def summarize(history: dict) -> dict:
    """summary.json's metrics: numbers for a single model, lists (one per member) for an ensemble."""
    results = final_and_best(history)
    pick = (lambda values: values) if is_ensemble(history) else (lambda values: values[0])
    return {
        "steps": completed_steps(history),
        "final_test_accuracy": pick([r.final_accuracy for r in results]),
        "final_test_loss": pick([r.final_loss for r in results]),
        "best_test_accuracy": pick([r.best_accuracy for r in results]),
        "best_test_step": pick([r.best_step for r in results]),
    }
