"""The whole experiment on the host: data -> state -> fused chunks -> records.

``train_and_evaluate(config)`` is the one call behind ``scripts/train.py``.
Between chunks of ``eval_every`` fused steps the host reads a few scalars
(the reporting point), reports progress, checks the loss is finite, saves
checkpoints and honours Ctrl-C/SIGTERM; everything else stays on the device.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import checkpoint, data, model, parallel, records, train
from jaxmlp import history as hist
from jaxmlp.config import Config, ConfigError
from jaxmlp.report import Reporter

CONFIG_FILE = "config.json"


class Interrupted(Exception):
    """The run stopped on a signal after saving; ``str`` says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Diverged(RuntimeError):
    """The training loss became non-finite; the history up to that chunk is saved."""


# Errors with a one-line message meant for the user (scripts print them without a traceback).
EXPECTED_ERRORS = (ConfigError, data.DataError, records.RecordError, parallel.PlacementError,
                   Diverged, FileNotFoundError)


def train_and_evaluate(config: Config, *, out_dir: str | None = None, dataset: data.Dataset | None = None,
                       resume: bool = False, quiet: bool = False, devices=None,
                       started: float | None = None) -> tuple[train.TrainState, dict]:
    """Run the experiment described by ``config``; returns (final state, host history).

    ``out_dir``: where records, figures and checkpoints go (None: nothing is written).
    ``dataset``: arrays to use instead of loading ``config.dataset`` through TFDS.
    ``resume``: continue from the latest checkpoint in ``out_dir``.
    ``started``: ``time.perf_counter()`` at process start, for the startup timing.
    """
    clock = {"started": time.perf_counter() if started is None else started}
    if jax.process_count() > 1:
        # Many hosts: every process trains; only the first writes records, and checkpoints
        # (which would need every process to write its shards) are not supported yet.
        if resume or config.checkpoint_every:
            raise ConfigError("--resume and --checkpoint-every are not supported with several processes")
        if jax.process_index() != 0:
            out_dir = None
    if out_dir is not None:
        records.check_writable(out_dir, min_free_bytes=_output_bytes(config))
        if not resume:
            records.atomic_write_json(os.path.join(out_dir, CONFIG_FILE), config.to_dict())

    if dataset is None:
        dataset = data.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                            progress=not quiet)
    n_train = len(dataset.train_labels)
    if config.batch_size > n_train:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {n_train} training examples")
    clock["data_loaded"] = time.perf_counter()

    members = config.members
    placement = parallel.plan(config.batch_size, len(members), devices)
    dev_data = placement.put_replicated(train.Data(
        jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels, jnp.int32),
        # Training batches are gathered as uint8 and scaled inside the step (4x less memory
        # traffic); the test set is scaled once here, which halves each evaluation on CPU.
        jnp.asarray(dataset.test_images, jnp.float32) / 255.0, jnp.asarray(dataset.test_labels, jnp.int32)))
    state, history, orders = placement.put_state(init_run(config, n_train))

    static_eval = dict(eval_every=config.eval_every, eval_batch_size=config.eval_batch_size)
    static_run = dict(num_steps=config.eval_every, batch_size=config.batch_size,
                      batch_sharding=placement.batch_sharding)
    run_steps, record = ((train.ensemble_run_steps, train.ensemble_record) if config.is_ensemble
                         else (train.run_steps, train.record))
    # Compile both programs ahead of time so compile time is measured on its own.
    num_models = len(members) if config.is_ensemble else None
    run_c = run_steps.lower(state, dev_data, orders, **static_run).compile()
    no_metrics = placement.put_state(train.nan_metrics(config.eval_every, num_models))
    record_c = record.lower(state, history, no_metrics, dev_data, **static_eval).compile()
    clock["compiled"] = time.perf_counter()

    mngr = checkpoint.manager(out_dir) if out_dir is not None and jax.process_count() == 1 else None
    if resume:
        if mngr is None or mngr.latest_step() is None:
            raise FileNotFoundError(f"nothing to resume in {out_dir!r}: it holds no checkpoint")
        state, history = placement.put_state(checkpoint.restore(mngr, state, history))
    else:
        history, _ = record_c(state, history, no_metrics, dev_data)  # the step-0 evaluation
    step = int(np.max(jax.device_get(state.step)))

    reporter = Reporter(config.steps, start_step=step, log_every=config.log_every,
                        examples_per_epoch=n_train, batch_size=config.batch_size, quiet=quiet)
    train_s = eval_s = 0.0
    status, error = "complete", None
    try:
        with _stop_on_signals() as stop:
            while step < config.steps:
                t0 = time.perf_counter()
                state, metrics = run_c(state, dev_data, orders)
                jax.block_until_ready(metrics)
                t1 = time.perf_counter()
                history, report = record_c(state, history, metrics, dev_data)
                report = jax.device_get(report)
                train_s, eval_s = train_s + t1 - t0, eval_s + time.perf_counter() - t1
                step = int(np.max(report["step"]))
                if not np.all(report["finite"]):
                    status = "diverged"
                    break
                reporter.chunk(step, float(np.mean(report["test_accuracy"])),
                               float(np.mean(report["test_loss"])))
                if mngr is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                    checkpoint.save(mngr, state, history)
                if stop.signum is not None:
                    status = "interrupted"
                    break
    finally:
        reporter.close()

    host_history = hist.truncate(history, step)
    if status == "diverged":
        bad = hist.first_nonfinite_step(host_history)
        error = (f"training diverged: the loss is not finite from step {bad} "
                 f"(learning rate {config.learning_rate}); lower --learning-rate")
    if out_dir is not None:
        if mngr is not None and status != "diverged":  # a diverged state is not worth resuming from
            checkpoint.save(mngr, state, history)
        timings = {"train_seconds": train_s, "eval_seconds": eval_s}
        write_records(out_dir, config, state, host_history, dataset, placement, clock, timings,
                      status=status, error=error)
    if mngr is not None:
        mngr.close()
    if status == "diverged":
        raise Diverged(error)
    if status == "interrupted":
        where = out_dir if out_dir is not None else "(no --out, so nothing was saved)"
        raise Interrupted(f"interrupted at step {step}; saved to {where}; continue with: "
                          f"python scripts/train.py --resume {where}", stop.signum)
    return state, host_history


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_run(config: Config, num_examples: int):
    """(state, history, orders) at step 0; ensembles get a leading model axis on each.

    Each member's seed gives one key, split at the top into an init key and a
    data-order key, so member i of an ensemble equals the single run with its
    seed and learning rate.
    """
    members = config.members
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(
        jnp.asarray([s for s, _ in members], jnp.uint32))
    init_keys, data_keys = keys[:, 0], keys[:, 1]
    n_epochs = train.num_epochs(config.steps, config.batch_size, num_examples)
    draw = lambda k: train.epoch_orders(k, num_epochs=n_epochs, num_examples=num_examples)
    history = hist.empty(config.steps, config.eval_every, len(config.hidden) + 1)
    if not config.is_ensemble:
        return train.init_state(init_keys[0], config), history, draw(data_keys[0])
    state = train.init_ensemble(init_keys, jnp.asarray([lr for _, lr in members]), config)
    history = jax.tree.map(lambda v: jnp.broadcast_to(v, (len(members), *v.shape)), history)
    return state, history, jax.vmap(draw)(data_keys)


def write_records(out_dir, config, state, history, dataset, placement, clock, timings, *,
                  status, error=None):
    """history.npz, misclassified.npz, summary.json and the figures, each written atomically."""
    from jaxmlp import plot  # matplotlib is only needed once a run ends

    files = {"config": CONFIG_FILE, "history": records.HISTORY_FILE}
    records.atomic_save_npz(os.path.join(out_dir, records.HISTORY_FILE), history)
    wrong = None
    if not config.is_ensemble:
        wrong = train.misclassified(state, dataset.test_images, dataset.test_labels)
        records.atomic_save_npz(os.path.join(out_dir, records.MISCLASSIFIED_FILE), wrong)
        files["misclassified"] = records.MISCLASSIFIED_FILE
    members = [f"seed {s}, lr {lr:g}" for s, lr in config.members] if config.is_ensemble else None
    for path in plot.plot_history(history, out_dir, misclassified=wrong, members=members):
        files[os.path.splitext(os.path.basename(path))[0] + "_plot"] = os.path.basename(path)
    if os.path.isdir(os.path.join(out_dir, "checkpoints")):  # none across several processes
        files["checkpoints"] = "checkpoints"
    files["summary"] = records.SUMMARY_FILE
    clock["written"] = time.perf_counter()
    summary = {
        "status": status,
        "error": error,
        **hist.summarize(history),
        "config": config.to_dict(),
        "members": [{"seed": s, "learning_rate": lr} for s, lr in config.members],
        "data": {"name": dataset.name, "version": dataset.version, "source": dataset.source,
                 "train_examples": int(len(dataset.train_labels)),
                 "test_examples": int(len(dataset.test_labels))},
        "num_params": model.num_params(state.params) // len(config.members),  # per model
        "environment": records.environment(),
        "placement": {"mode": placement.mode, "num_devices": placement.num_devices},
        "timings": {
            "startup_seconds": clock["data_loaded"] - clock["started"],
            "compile_seconds": clock["compiled"] - clock["data_loaded"],
            **timings,
            "total_seconds": clock["written"] - clock["started"],
        },
        "files": {k: os.path.abspath(os.path.join(out_dir, v)) for k, v in files.items()},
    }
    summary["wall_seconds"] = summary["timings"]["total_seconds"]
    records.atomic_write_json(os.path.join(out_dir, records.SUMMARY_FILE), summary)
    return summary


def _output_bytes(config: Config) -> int:
    """A generous estimate of what a run writes: checkpoints and history (float32 parameters
    and about four numbers per step, per model), plus the figures."""
    widths = (model.NUM_INPUTS, *config.hidden, model.NUM_CLASSES)
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    per_model = 4 * (params + 4 * config.steps)
    return len(config.members) * (checkpoint.KEEP + 2) * per_model + 16 * 2**20


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks between chunks (main thread only)."""

    stop = types.SimpleNamespace(signum=None)

    def handler(signum, _frame):
        if stop.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        stop.signum = signum

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
