"""The experiment's configuration: one frozen dataclass, presets, validation.

The defaults are Görner's 2017 seed experiment (the ``relu`` preset). The
original minimises the cross-entropy *summed* over a batch of 100 with SGD at
lr 0.003; jaxmlp uses the *mean* over the batch, so the same update needs lr 0.3:

    grad(sum) = B * grad(mean)   =>   0.003 * grad(sum) == 0.3 * grad(mean)  at B = 100.

The mean makes the reported loss per image. Adam is invariant to a constant loss
scale up to its epsilon, so the Adam presets keep the talk's rates. No JAX here:
scripts validate flags before paying for it.
"""

from __future__ import annotations

import dataclasses
import math

DATASETS = ("mnist", "fashion_mnist", "kmnist")
"""Datasets jaxmlp accepts: all 28x28 grey images in 10 classes."""

ACTIVATIONS = ("relu", "sigmoid")
OPTIMIZERS = ("sgd", "adam")
TRAIN_METRICS = ("before", "after")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. ``Config()`` is the seed experiment."""

    # Data.
    dataset: str = _field("mnist", f"one of {', '.join(DATASETS)}")
    data_dir: str | None = _field(None, "TFDS data dir (default: TFDS's, ~/tensorflow_datasets)")
    manual_dir: str | None = _field(None, "folder with the four MNIST-format IDX .gz files "
                                          "to prepare through TFDS")
    train_split: str = _field("train", "TFDS split string for training, e.g. 'train[5000:]' "
                                       "(the original's 55,000)")
    test_split: str = _field("test", "TFDS split string scored every eval_every steps")
    # The MLP front end (the default init): 784 -> hidden... -> 10. Your own ``init`` replaces
    # these fields and the optimizer's.
    preset: str = _field("relu", "MLP front end: the ladder rung its fields came from (see PRESETS)")
    hidden: tuple[int, ...] = _field((200, 100, 60, 30), "MLP front end: hidden layer widths, comma-separated "
                                                         "('' for none: softmax regression)")
    activation: str = _field("relu", f"MLP front end: hidden activation: {', '.join(ACTIVATIONS)}")
    init_stddev: float = _field(0.1, "MLP front end: weights ~ truncated normal(0, stddev) cut at 2 stddev "
                                     "(0: all zeros)")
    bias_init: float = _field(0.0, "MLP front end: initial bias of the hidden layers (the output layer's is 0)")
    dropout: float = _field(0.0, "MLP front end: dropout rate after each hidden layer in training "
                                 "(0.25 is the talk's pkeep 0.75)")
    # The MLP front end's optimizer, on the batch-mean cross-entropy (see the module docstring).
    optimizer: str = _field("sgd", f"MLP front end: one of {', '.join(OPTIMIZERS)}")
    learning_rate: float = _field(0.3, "MLP front end: learning rate on the batch-mean loss, the peak of a "
                                       "decay (0.3 == 0.003 on the summed loss at batch 100)")
    lr_decay_steps: int = _field(0, "MLP front end: lr = lr_min + (learning_rate - lr_min) * exp(-step / this) "
                                    "(0: constant)")
    lr_min: float = _field(0.0, "MLP front end: the decayed learning rate's floor")
    batch_size: int = _field(100, "training batch size")
    steps: int = _field(10_000, "training steps")
    # Evaluation and reporting.
    train_metrics: str = _field("before", "minibatch metrics under the parameters 'before' the "
                                          "update (free) or 'after' it (the original's; costs "
                                          "a forward pass)")
    eval_every: int = _field(100, "score the whole test set every this many steps (and at step 0)")
    eval_batch_size: int = _field(1_000, "test images per forward pass (last batch padded and masked)")
    log_every: int = _field(1_000, "print a line every this many steps")
    checkpoint_every: int = _field(0, "save a checkpoint every this many steps (0: only at the end)")
    seed: int = _field(0, "one key, split into init, data-order and dropout keys")
    # Ensembles: one model per (seed, learning rate) pair, all in one compiled program.
    seeds: tuple[int, ...] = _field((), "ensemble: one model per seed, comma-separated (e.g. 0,1,2,3)")
    learning_rates: tuple[float, ...] = _field((), "ensemble: one model per learning rate (peak), "
                                                   "comma-separated; replaces the optimizer's "
                                                   "(needs optax.inject_hyperparams)")

    def __post_init__(self):
        # Normalise list-like input so configs hash and compare by value.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "seeds", tuple(int(v) for v in self.seeds))
        object.__setattr__(self, "learning_rates", tuple(float(v) for v in self.learning_rates))
        for name in ("learning_rate", "init_stddev", "bias_init", "dropout", "lr_min"):
            if isinstance(getattr(self, name), int):
                object.__setattr__(self, name, float(getattr(self, name)))
        _validate(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Config":
        """The ladder rung ``name`` (see ``PRESETS``), with explicit ``overrides`` on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    @property
    def num_evals(self) -> int:
        """Number of test evaluations: at step 0 and after every interval."""
        return self.steps // self.eval_every + 1

    @property
    def members(self) -> tuple[tuple[int, float | None], ...]:
        """(seed, learning rate) of each model: the product of ``seeds`` and ``learning_rates``;
        the rate is None where no sweep replaces the optimizer's."""
        return tuple((s, lr) for s in (self.seeds or (self.seed,))
                     for lr in (self.learning_rates or (None,)))

    @property
    def member_names(self) -> list[str]:
        """A label per member, naming what varies: "seed 3", "lr 0.1", "seed 3, lr 0.1"."""
        names = []
        for s, lr in self.members:
            parts = ([f"seed {s}"] if self.seeds else []) + ([f"lr {lr:g}"] if lr is not None else [])
            names.append(", ".join(parts) or f"seed {s}")
        return names

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
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"malformed config: {' '.join(str(e).split())}") from e


RESUMABLE = ("data_dir", "manual_dir", "log_every", "checkpoint_every")
"""Fields ``--resume`` may change: where the data lives and how often to report or save.
Everything else (``eval_batch_size`` too: it changes the test loss's summation order)
defines the run the checkpoint belongs to."""


def resumed(saved: Config, **given) -> Config:
    """``saved`` with the flags in ``given``; ``ConfigError`` if one would change the run."""
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE
                     and getattr(saved, k) != getattr(saved.replace(**{k: v}), k))
    if changed:
        raise ConfigError("--resume continues the saved run; drop --"
                          + ", --".join(c.replace("_", "-") for c in changed))
    return saved.replace(**given)


def help_text(name: str) -> str:
    """The one-line help of field ``name`` (flags and docs read it from here)."""
    return next(f.metadata["help"] for f in dataclasses.fields(Config) if f.name == name)


_SEED_NET = dict(hidden=(200, 100, 60, 30), init_stddev=0.1, dropout=0.0, lr_decay_steps=0,
                 lr_min=0.0)
_DECAY = dict(optimizer="adam", learning_rate=0.003, lr_decay_steps=2000, lr_min=0.0001)

PRESETS: dict[str, dict] = {
    # Görner's MLP ladder (2017): 10,000 steps of batch 100, test set every 100 steps.
    "softmax": dict(_SEED_NET, hidden=(), init_stddev=0.0, bias_init=0.0, activation="relu",
                    optimizer="sgd", learning_rate=0.5),  # lr 0.005 on the summed loss
    "sigmoid": dict(_SEED_NET, activation="sigmoid", bias_init=0.0, optimizer="adam",
                    learning_rate=0.003),
    "relu": dict(_SEED_NET, activation="relu", bias_init=0.0, optimizer="sgd", learning_rate=0.3),
    "relu-lrdecay": dict(_SEED_NET, activation="relu", bias_init=0.1, **_DECAY),
    "relu-lrdecay-dropout": dict(_SEED_NET, activation="relu", bias_init=0.1, **_DECAY,
                                 dropout=0.25),  # pkeep 0.75
}
"""Config fields of each rung; ``relu`` is the seed experiment and ``Config()``'s defaults."""

GORNER_MNIST = {  # his reported final MNIST test accuracy for each rung (not measured here)
    "softmax": "~0.92 (max 0.9268)", "sigmoid": "0.9788", "relu": "just under 0.98",
    "relu-lrdecay": "0.9824", "relu-lrdecay-dropout": "0.9817",
}


def _validate(c: Config) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    def one_of(name: str, accepted):
        need(getattr(c, name) in accepted,
             f"unknown {name} {getattr(c, name)!r}; accepted: {', '.join(accepted)}")

    one_of("dataset", DATASETS)
    one_of("preset", tuple(PRESETS))
    one_of("activation", ACTIVATIONS)
    one_of("optimizer", OPTIMIZERS)
    one_of("train_metrics", TRAIN_METRICS)
    for name in ("train_split", "test_split"):
        v = getattr(c, name)
        need(isinstance(v, str) and v.strip() != "", f"{name} must be a TFDS split string, got {v!r}")
    need(all(h > 0 for h in c.hidden), f"hidden widths must be positive integers, got {list(c.hidden)}")
    for name in ("batch_size", "steps", "eval_every", "eval_batch_size", "log_every"):
        v = getattr(c, name)
        need(isinstance(v, int) and v > 0, f"{name} must be a positive integer, got {v!r}")
    for name in ("checkpoint_every", "lr_decay_steps"):
        v = getattr(c, name)
        need(isinstance(v, int) and v >= 0, f"{name} must be an integer >= 0, got {v!r}")
    for name in ("learning_rate", "init_stddev", "bias_init", "lr_min", "dropout"):
        v = getattr(c, name)
        need(isinstance(v, float) and math.isfinite(v), f"{name} must be a finite number, got {v!r}")
    need(c.learning_rate > 0, f"learning_rate must be positive, got {c.learning_rate!r}")
    need(c.init_stddev >= 0, f"init_stddev must be >= 0, got {c.init_stddev!r}")
    need(0 <= c.dropout < 1, f"dropout is a rate in [0, 1), got {c.dropout!r}")
    need(0 <= c.lr_min, f"lr_min must be >= 0, got {c.lr_min!r}")
    for lr in (c.learning_rate, *c.learning_rates):
        need(not c.lr_decay_steps or lr > c.lr_min,
             f"the learning rate {lr!r} must exceed lr_min ({c.lr_min!r}) to decay to it")
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
