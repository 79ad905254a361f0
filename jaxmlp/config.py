"""The experiment's configuration: one frozen dataclass, validated once.

The defaults are Görner's 2017 MNIST experiment. The original minimises the
cross-entropy *summed* over a batch of 100 with SGD at lr 0.003; jaxmlp uses
the *mean* over the batch, so the same update needs lr 0.3:

    grad(sum) = B * grad(mean)   =>   0.003 * grad(sum) == 0.3 * grad(mean)  at B = 100.

The mean keeps the learning rate meaningful when the batch size changes and
makes the reported loss a per-image cross-entropy (``tests/test_train.py``
checks the equivalence).
"""

from __future__ import annotations

import dataclasses
import math

DATASETS = ("mnist", "fashion_mnist", "kmnist")
"""Datasets jaxmlp accepts: all 28x28 grey images in 10 classes."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. ``Config()`` is the original experiment."""

    # Data.
    dataset: str = "mnist"  # one of DATASETS
    data_dir: str | None = None  # TFDS data dir (None: TFDS's default, ~/tensorflow_datasets)
    manual_dir: str | None = None  # folder with the four MNIST-format IDX .gz files
    # Model: 784 -> hidden... -> 10, ReLU between layers, logits out.
    hidden: tuple[int, ...] = (200, 100, 60, 30)
    init_stddev: float = 0.1  # weights ~ truncated normal(0, stddev) cut at 2 stddev; biases 0
    # Optimisation: plain SGD on the batch-mean cross-entropy (see module docstring).
    learning_rate: float = 0.3  # == lr 0.003 on the summed loss at batch 100
    batch_size: int = 100
    steps: int = 10_000
    # Evaluation and reporting.
    eval_every: int = 100  # score the whole test set every this many steps (and at step 0)
    eval_batch_size: int = 10_000  # test images per forward pass; the last batch is padded and masked
    log_every: int = 1_000  # print a line every this many steps
    checkpoint_every: int = 0  # save an Orbax checkpoint every this many steps (0: only at the end)
    seed: int = 0  # one key, split into init and data-order keys
    # Ensembles: train one model per (seed, learning rate) pair of these, in one program.
    seeds: tuple[int, ...] = ()  # empty: just ``seed``
    learning_rates: tuple[float, ...] = ()  # empty: just ``learning_rate``

    def __post_init__(self):
        # Normalise list-like input so configs hash and compare by value.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "seeds", tuple(int(v) for v in self.seeds))
        object.__setattr__(self, "learning_rates", tuple(float(v) for v in self.learning_rates))
        _validate(self)

    @property
    def num_evals(self) -> int:
        """Number of test evaluations: at step 0 and after every interval."""
        return self.steps // self.eval_every + 1

    @property
    def members(self) -> list[tuple[int, float]]:
        """(seed, learning rate) of each model: the product of ``seeds`` and ``learning_rates``."""
        return [(s, lr) for s in (self.seeds or (self.seed,))
                for lr in (self.learning_rates or (self.learning_rate,))]

    @property
    def is_ensemble(self) -> bool:
        return bool(self.seeds or self.learning_rates)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("hidden", "seeds", "learning_rates"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        return cls(**d)


def _validate(c: Config) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(c.dataset in DATASETS, f"unknown dataset {c.dataset!r}; accepted: {', '.join(DATASETS)}")
    need(len(c.hidden) > 0 and all(h > 0 for h in c.hidden),
         f"hidden widths must be positive integers, got {list(c.hidden)}")
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "log_every"):
        v = getattr(c, name)
        need(isinstance(v, int) and v > 0, f"{name} must be a positive integer, got {v!r}")
    need(isinstance(c.checkpoint_every, int) and c.checkpoint_every >= 0,
         f"checkpoint_every must be >= 0, got {c.checkpoint_every!r}")
    for name in ("learning_rate", "init_stddev"):
        v = getattr(c, name)
        need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
             f"{name} must be a positive finite number, got {v!r}")
    # Fixed-length chunks between evaluations keep one compiled shape for the whole run.
    need(c.steps % c.eval_every == 0,
         f"eval_every ({c.eval_every}) must divide steps ({c.steps})")
    need(c.log_every % c.eval_every == 0,
         f"log_every ({c.log_every}) must be a multiple of eval_every ({c.eval_every})")
    need(c.checkpoint_every % c.eval_every == 0,
         f"checkpoint_every ({c.checkpoint_every}) must be a multiple of eval_every ({c.eval_every})")
    for s in (c.seed, *c.seeds):
        need(isinstance(s, int) and s >= 0, f"seeds must be non-negative integers, got {s!r}")
    for lr in c.learning_rates:
        need(math.isfinite(lr) and lr > 0, f"learning rates must be positive and finite, got {lr!r}")
    need(len(set(c.seeds)) == len(c.seeds), f"seeds repeat: {list(c.seeds)}")
    need(len(set(c.learning_rates)) == len(c.learning_rates),
         f"learning rates repeat: {list(c.learning_rates)}")
