"""Orbax checkpoints of a run: the train state and the history so far.

A checkpoint holds only arrays (step, params, optimizer state, history); the
static parts (graph definition, optimizer) are rebuilt from the config, and
the data order is a pure function of the seed, so a restored run continues
bit-identically.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from jaxmlp.train import TrainState

KEEP = 3  # checkpoints kept; older ones are deleted


def manager(run_dir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, "checkpoints")),
                                 options=options)


def _arrays(state: TrainState, history: dict) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "history": history}


def save(mngr: ocp.CheckpointManager, state: TrainState, history: dict) -> int:
    """Save at the state's step (the same for every ensemble member); returns that step."""
    step = int(jax.device_get(state.step).max())
    if step not in mngr.all_steps():
        mngr.save(step, args=ocp.args.StandardSave(_arrays(state, history)))
        mngr.wait_until_finished()
    return step


def restore(mngr: ocp.CheckpointManager, state: TrainState, history: dict,
            step: int | None = None) -> tuple[TrainState, dict]:
    """Restore into the structure, dtypes and shardings of a fresh ``state`` and ``history``."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError("no checkpoint to resume from")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state, history))
    got = mngr.restore(step, args=ocp.args.StandardRestore(target))
    state = state.replace(step=got["step"], params=got["params"], opt_state=got["opt_state"])
    return state, got["history"]
