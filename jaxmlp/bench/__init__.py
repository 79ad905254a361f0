"""Benchmark jaxmlp's training paths against each other, the hardware and the 2017 program.

=================  ==========================================================
``data``           synthetic (timing), learnable (accuracy) or .npz datasets
``paths``          the training paths compared, and ensembles of both kinds
``timing``         steady-state rates, ceilings, compile time, FLOPs, memory
``measure``        one measurement -> one JSON row, shared by both suites
``run``            the default suite: ``BenchConfig``, ``run_benchmark``
``accelerator``    the accelerator suite: ``AcceleratorConfig``, ``run_accelerator``
``processes``      child processes: time to first step, the whole default run
``original``       Görner's 2017 program in ``tf.compat.v1`` (the only TF import)
``report``         tables, JSON and figures
=================  ==========================================================

Names below load their module on first use, so ``python -m jaxmlp.bench.original``
pays for neither JAX nor the rest.
"""

import importlib

_PUBLIC = {
    "BenchConfig": "run", "run_benchmark": "run", "TARGETS": "run", "DEFAULT_HIDDEN": "run",
    "AcceleratorConfig": "accelerator", "run_accelerator": "accelerator",
    "VARIANTS": "paths", "LABELS": "paths", "KINDS": "paths",
    "format_table": "report", "format_accelerator": "report", "write_json": "report",
    "plot": "report", "plot_accelerator": "report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'jaxmlp.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxmlp.bench.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
