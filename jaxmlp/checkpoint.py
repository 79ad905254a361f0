"""Orbax checkpoints of a run: the train state's arrays and the history so far.

A checkpoint holds only arrays (step, params, the model's other state, optimizer
state, key, history); the static parts (graph definition, optimizer) are rebuilt
from the config, and the data order is a pure function of the seed, so a
restored run continues bit-identically. PRNG keys are stored as their raw
uint32 data. Every failure to read one is a one-line ``RecordError``.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from jaxmlp import parallel
from jaxmlp.records import RecordError
from jaxmlp.train import TrainState

KEEP = 3  # checkpoints kept; older ones are deleted


def manager(directory: str):
    """The ``orbax.checkpoint.CheckpointManager`` of a run's checkpoint folder
    (``RunFiles(...).checkpoints``). Orbax is imported here, not at module import:
    it takes longer to import than JAX, and runs that never save never pay for it."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def latest_step(directory: str) -> int:
    """The step of the newest checkpoint in ``directory``; ``RecordError`` if there is none."""
    steps = []
    if os.path.isdir(directory):
        steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    if not steps:
        run = os.path.dirname(os.path.normpath(directory)) or "."
        raise RecordError(f"nothing to resume: {directory} holds no checkpoint (the run stopped "
                          f"or diverged before its first one, or {run} is not a jaxmlp run "
                          f"folder); start it again with --out {run} --overwrite")
    return max(steps)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _arrays(state: TrainState, history: dict) -> dict:
    tree = {"step": state.step, "params": state.params, "rest": state.rest,
            "opt_state": state.opt_state, "key": state.key, "history": history}
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


DIGEST = "digest"  # the checkpoint's own entry: SHA-256 of every other array


def _digest(arrays: dict) -> np.ndarray:
    """SHA-256 over each array's path, dtype, shape and bytes, as 32 uint8. Orbax keeps no
    checksum of array data: without this a garbled file restores as garbage parameters."""
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(parallel.host(arrays))[0]:
        a = np.ascontiguousarray(x)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


def save(mngr, state: TrainState, history: dict) -> int:
    """Save at the run's step (the furthest member's), with its digest; returns that step."""
    import orbax.checkpoint as ocp

    step = int(np.max(parallel.host(state.step)))
    if step not in mngr.all_steps():
        arrays = _arrays(state, history)
        mngr.save(step, args=ocp.args.StandardSave({**arrays, DIGEST: _digest(arrays)}))
        mngr.wait_until_finished()
    return step


def _instead(directory, step: int) -> str:
    """What to do about the unreadable checkpoint at ``step``: the one before, or start again."""
    directory = os.fspath(directory)
    before = [int(n) for n in os.listdir(directory) if n.isdigit() and int(n) < step]
    if before:
        return (f"delete {os.path.join(directory, str(step))} to resume from the checkpoint at "
                f"step {max(before)}")
    return f"start again with --out {os.path.dirname(os.path.normpath(directory))} --overwrite"


def restore(mngr, state: TrainState, history: dict) -> tuple[TrainState, dict]:
    """Restore the latest checkpoint into the structure, dtypes and shardings of a fresh
    ``state`` and ``history``."""
    import orbax.checkpoint as ocp

    step = latest_step(os.fspath(mngr.directory))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state, history))
    target[DIGEST] = jax.ShapeDtypeStruct((32,), np.uint8)
    try:
        got = dict(mngr.restore(step, args=ocp.args.StandardRestore(target)))
    except Exception as e:  # Orbax raises many types for truncated or corrupt files
        message = " ".join(str(e).split())[:200]
        raise RecordError(f"cannot restore the checkpoint at step {step} in {mngr.directory}: "
                          f"{type(e).__name__}: {message}; {_instead(mngr.directory, step)}") from e
    if not np.array_equal(np.asarray(jax.device_get(got.pop(DIGEST))), _digest(got)):
        raise RecordError(f"the checkpoint at step {step} in {mngr.directory} is corrupt: its "
                          f"arrays do not match the digest saved with them; "
                          f"{_instead(mngr.directory, step)}")
    fresh = {"step": state.step, "params": state.params, "rest": state.rest,
             "opt_state": state.opt_state, "key": state.key}
    rewrap = lambda like, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(like)) \
        if _is_key(like) else x
    got_state = jax.tree.map(rewrap, fresh, {k: got[k] for k in fresh})
    return state.replace(**got_state), got["history"]
