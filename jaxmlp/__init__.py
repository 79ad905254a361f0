"""jaxmlp: Görner's 2017 MNIST MLP ladder as a pure, fused JAX module, open to any model.

    from jaxmlp import Config, Dataset, TrainState, train_step, evaluate, train_and_evaluate

Names are imported on first use, so ``jaxmlp.config``, ``jaxmlp.history``,
``jaxmlp.plot`` and ``jaxmlp.records`` load without JAX.
"""

import importlib

_PUBLIC = {
    "Config": "config", "ConfigError": "config", "DATASETS": "config", "PRESETS": "config",
    "MLP": "model",
    "TrainState": "train", "train_step": "train", "evaluate": "train", "predict": "train",
    "cross_entropy": "train", "accuracy": "train", "optimizer": "train",
    "Data": "loop", "init_run": "loop", "mlp_init": "loop", "run_steps": "loop",
    "epoch_orders": "loop", "num_epochs": "loop", "batch_at": "loop",
    "train_and_evaluate": "run", "Result": "run",
    "load_dataset": ("data", "load"), "Dataset": "data", "DataError": "data",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'jaxmlp' has no attribute {name!r}")
    module, attr = _PUBLIC[name] if isinstance(_PUBLIC[name], tuple) else (_PUBLIC[name], name)
    value = getattr(importlib.import_module(f"jaxmlp.{module}"), attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
