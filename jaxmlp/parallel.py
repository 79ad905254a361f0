"""Where arrays live when there is more than one device.

One 1-D mesh over every device. A single model trains data-parallel: the
dataset and parameters are replicated and each step's batch axis is split
over the mesh (XLA inserts the gradient all-reduce). An ensemble whose size
the device count divides is split over the model axis instead: members are
independent, so that needs no communication at all. Across processes the mesh
spans every process's devices; ``host`` and ``gather`` bring values to each host.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils
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
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # global already
            return x
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
    if num_models > 1 and num_models % n == 0:
        return Placement(mesh, "model")
    if batch_size % n:
        raise PlacementError(
            f"batch size {batch_size} cannot be split evenly over {n} devices; "
            f"use a multiple of {n} (e.g. --batch-size {((batch_size + n - 1) // n) * n})")
    return Placement(mesh, "data")


def host(tree):
    """Host (numpy) copies of ``tree``'s arrays: across processes, each one's global value,
    gathered (a collective: every process calls it, in the same order)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def gather(value: int) -> np.ndarray:
    """(process_count,) int32: ``value`` from every process, in process order (a collective)."""
    return np.asarray(host(np.asarray([value], np.int32)))  # a host's own array: concatenated
