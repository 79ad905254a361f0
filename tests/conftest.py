"""Shared test helpers, made one way: the repository root, synthetic data and histories,
and the environment of a child process.

Each is a plain name (``from conftest import ROOT, synthetic``: pytest puts tests/ on
``sys.path``, and so do the scripts tests start in subprocesses) and a fixture.
Nothing here imports JAX.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from jaxmlp import data

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

PERCENTILE_LEVELS = np.array([0, 10, 25, 50, 75, 90, 100], np.float32)


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child process that imports this checkout first, installed or not."""
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return dict(os.environ, PYTHONPATH=path, **extra)


def synthetic(n_train: int = 1000, n_test: int = 303, seed: int = 0) -> data.Dataset:
    """Learnable digits: class c lights up rows 2c..2c+1. 303 test images: no batch divides it."""
    from jaxmlp import data  # here, so that a broken data layer fails only the tests that use it

    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            x[y == c, 2 * c:2 * c + 2, :] += 150
        return x, y

    return data.Dataset(*make(n_train), *make(n_test), name="mnist", version="synthetic", source="test")


def synthetic_history(steps: int = 300, eval_every: int = 50, layers: int = 5, members: int | None = None,
                      seed: int = 0, final_test_loss: float = 0.08) -> dict:
    """A history shaped like the training core's: loss decays to ``final_test_loss``.
    ``members=K`` gives an ensemble (a leading K axis); members differ by a few percent."""
    rng = np.random.default_rng(seed)
    k = members or 1
    t = np.arange(1, steps + 1)
    e = np.arange(0, steps + 1, eval_every)
    decay = lambda s: np.exp(-s / max(steps / 6, 1))  # noqa: E731
    spread = 1 + 0.05 * np.arange(k)[:, None]
    test_loss = (2.3 - final_test_loss) * decay(e)[None] + final_test_loss * spread
    train_loss = ((2.3 * decay(t) + 0.04)[None] * np.exp(rng.normal(0, 0.3, (k, t.size))))
    levels = PERCENTILE_LEVELS
    h = {
        "train_step": t.astype(np.int32),
        "test_step": e.astype(np.int32),
        "percentiles": levels,
        "train_loss": train_loss,
        "train_accuracy": np.clip(1 - train_loss / 2.5, 0, 1),
        "test_loss": test_loss,
        "test_accuracy": 1 - test_loss / 2.6,
        # Percentile bands that widen as training goes on, wider in later layers.
        "weight_percentiles": (np.linspace(-0.2, 0.2, levels.size)[None, None, None, :]
                               * (1 + e[None, :, None, None] / steps)
                               * (1 + 0.2 * np.arange(layers))[None, None, :, None]
                               * spread[:, :, None, None]),
        "bias_percentiles": (np.linspace(-0.1, 0.1, levels.size)[None, None, None, :]
                             * (e[None, :, None, None] / steps) * np.ones((k, 1, layers, 1))),
    }
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_percentiles",
                "bias_percentiles"):
        h[key] = h[key].astype(np.float32)
        if members is None:
            h[key] = h[key][0]
    return h


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def synthetic_dataset() -> data.Dataset:
    """``synthetic()`` with its defaults, made once per session (tests must not modify it)."""
    return synthetic()


def device_data(ds: data.Dataset):
    """``ds`` as the device arrays the loop trains on (test images scaled once, as run.py does)."""
    import jax.numpy as jnp

    from jaxmlp import loop

    return loop.Data(jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels, jnp.int32),
                     jnp.asarray(ds.test_images, jnp.float32) / 255.0,
                     jnp.asarray(ds.test_labels, jnp.int32))


def first_nonfinite_by_replay(config, ds: data.Dataset) -> int | None:
    """The first step (1-based) whose minibatch loss is not finite when the single model
    ``config`` describes is replayed one ``train.train_step`` at a time, on the batches the
    run draws, with no guard: an independent reference for where the guard marks divergence."""
    import jax
    import numpy as np

    from jaxmlp import loop, train

    state, _, orders = loop.init_run(config, len(ds.train_labels))
    d = device_data(ds)
    for t in range(config.steps):
        state, m = train.train_step(state, loop.batch_at(d, orders, jax.numpy.int32(t), config.batch_size))
        if not np.isfinite(float(m["loss"])):
            return t + 1
    return None
