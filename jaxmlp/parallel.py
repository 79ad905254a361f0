"""Where arrays live when there is more than one device.

One 1-D mesh over every device. A single model trains data-parallel: the
dataset and parameters are replicated and each step's batch axis is split
over the mesh (XLA inserts the gradient all-reduce). An ensemble whose size
the device count divides is split over the model axis instead: members are
independent, so that needs no communication at all.

On CPU, XLA shows one device whatever the core count; ``use_cpu_devices``,
called by the scripts before JAX starts with ``cpu_layout``'s count, gives an
ensemble a CPU device per core, so its members train side by side, and a single
model a second CPU device that scores the test set beside training.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "devices"


class PlacementError(ValueError):
    """The run cannot be split over the devices as configured."""


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: Mesh | None
    mode: str  # 'single' | 'data' (batch split) | 'model' (ensemble members split)

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    @property
    def replicated(self):
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self):
        """The sharding constraint for a step's batch (None: leave it to XLA)."""
        return NamedSharding(self.mesh, P(AXIS)) if self.mode == "data" else None

    @property
    def state_sharding(self):
        """The sharding of a state's/history's leaves (leading model axis in 'model' mode)."""
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, P(AXIS) if self.mode == "model" else P())

    def put_state(self, tree):
        s = self.state_sharding
        return tree if s is None else _put(tree, s)

    def put_replicated(self, tree):
        s = self.replicated
        return jax.device_put(tree) if s is None else _put(tree, s)


def _put(tree, sharding):
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # Across processes each host builds its shards from its own copy (device_put would
    # compare the copies, and NaN placeholders never compare equal).
    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # keys: place their raw data
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree)


def plan(batch_size: int, num_models: int = 1, devices=None) -> Placement:
    """Choose how to spread a run of ``num_models`` models over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n == 1:
        return Placement(None, "single")
    mesh = Mesh(np.asarray(devices), (AXIS,))
    # Across processes, keep everything replicated but the batch, so every host can read
    # the metrics and parameters it reports without a gather.
    if num_models > 1 and num_models % n == 0 and jax.process_count() == 1:
        return Placement(mesh, "model")
    if batch_size % n:
        raise PlacementError(
            f"batch size {batch_size} cannot be split evenly over {n} devices; "
            f"use a multiple of {n} (e.g. --batch-size {((batch_size + n - 1) // n) * n})")
    return Placement(mesh, "data")


def split_count(num_models: int, num_devices: int) -> int:
    """The most of ``num_devices`` that an ensemble of ``num_models`` splits over evenly."""
    return max(d for d in range(1, min(num_devices, num_models) + 1) if num_models % d == 0)


def cpu_layout(num_models: int, cores: int) -> tuple[int, bool]:
    """(CPU devices for a run of ``num_models`` on ``cores`` cores, whether the run scores its
    test set on a device of its own).

    An ensemble that splits over the cores gets a device per core. Anything else trains
    on one device and, with a second core, is scored on a second device while the next
    chunk trains: on 2 cores, 100 seed steps and a 10k evaluation took 73 ms side by side
    against 68 + 17 ms one after the other, as training at batch 100 gains little from its
    second core (100 steps on one core: 78 ms). Measured once here, fastest of 60 each;
    the benchmark does not time this.
    """
    split = split_count(num_models, cores)
    return (split, False) if split > 1 else (min(2, cores), cores > 1)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_cpu_devices(n: int) -> int | None:
    """Before JAX starts its backends: make XLA:CPU show ``n`` devices.

    XLA:CPU shows one device whatever the core count, and runs one small program at a
    time over every core. An ensemble split over one device per core trains its
    members side by side instead (``scripts/benchmark.py`` measures the model-steps/s
    of both layouts; docs/benchmark-cpu.json). The scripts call this with
    ``cpu_layout``'s count. (A single model split data parallel over such devices ran
    2.7x slower, measured once: it trains on one of them.) A count set already
    (``XLA_FLAGS``, ``jax_num_cpu_devices``) is left as it is, and once JAX has started
    (a notebook) nothing changes. Returns the count set, or None.
    """
    if n <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") \
            or jax.config.jax_num_cpu_devices >= 0:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backends are up already: too late to change
        return None
    return n
