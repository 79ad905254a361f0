"""Shared test helpers, made one way: the repository root, synthetic data and histories,
the environment of a child process, and a persistent compilation cache.

Each is a plain name (``from conftest import ROOT, synthetic``) and, where useful, a
fixture. Long suites carry ``@pytest.mark.slow``: ``pytest -q`` skips them and
``pytest -q -m slow`` runs them (.ci/run does both).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

PERCENTILE_LEVELS = np.array([0, 10, 25, 50, 75, 90, 100], np.float32)
COMPILE_CACHE = ROOT / ".pytest_cache" / "jax-compile"


def pytest_configure(config):
    # A persistent compilation cache: a second `pytest -q` compiles (almost) nothing.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(COMPILE_CACHE))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not config.option.markexpr:
        config.option.markexpr = "not slow"


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a child process that imports this checkout first, installed or not."""
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return dict(os.environ, PYTHONPATH=path, **extra)


def synthetic(n_train: int = 1000, n_test: int = 303, seed: int = 0, shape=(28, 28),
              classes: int = 10):
    """Learnable images: class c lights up rows 2c..2c+1 (mod the height). 303 test images:
    no batch size divides it."""
    from jaxmlp import data  # here, so that a broken data layer fails only the tests that use it

    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        x = rng.integers(0, 80, (n, *shape)).astype(np.uint8)
        for c in range(classes):
            for row in (2 * c % shape[0], (2 * c + 1) % shape[0]):
                x[y == c, row] += 150
        return x, y

    return data.Dataset(*make(n_train), *make(n_test), name="synthetic", source="test")


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
def synthetic_dataset():
    """``synthetic()`` with its defaults, made once per session (tests must not modify it)."""
    return synthetic()
