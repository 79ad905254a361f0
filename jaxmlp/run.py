"""The whole experiment on the host: load, place, compile, run, write.

``train_and_evaluate(config)`` is the one call behind ``scripts/train.py``.
Between chunks of ``eval_every`` fused steps the host reads a few scalars (the
reporting point), reports progress, notes members that diverged, saves
checkpoints and honours Ctrl-C/SIGTERM; everything else stays on the device.
Each chunk is scored (``record``) while the next one already trains from the
guarded state (``guard``), on a device of its own where the run has one; a run
that stops drops that next chunk unread.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import signal
import threading
import time
import types
from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxmlp import checkpoint, data, loop, model, parallel, records, runs, train
from jaxmlp import history as hist
from jaxmlp.config import Config, ConfigError
from jaxmlp.report import Reporter

class Interrupted(Exception):
    """The run stopped on a signal; ``str`` says what was saved and how to go on."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class Diverged(RuntimeError):
    """Every model's loss or parameters became non-finite; the record is saved.
    ``summary``: what summary.json holds (its ``members`` say where each one diverged)."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal: the run stopped where it was (a ``KeyboardInterrupt``, so that
    nothing catches it on the way out)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class AlreadyComplete(Exception):
    """``resume`` found a run that had already finished; nothing was changed."""


# Errors with a one-line message meant for the user (scripts print them without a traceback).
EXPECTED_ERRORS = (ConfigError, data.DataError, records.RecordError, parallel.PlacementError,
                   Diverged)


class Result(NamedTuple):
    state: train.TrainState  # the final state (a leading model axis for ensembles)
    history: dict  # host arrays, up to the last step run
    summary: dict  # what summary.json holds (also when nothing is written)


def final_lines(summary: dict, out_dir) -> list[str]:
    """What a script prints when a run ends: the result, and a warning per diverged member."""
    ok = [m for m in summary["members"] if m["status"] != "diverged"]
    lines = [f"warning: member seed {m['seed']}, lr {m['learning_rate']:g} diverged at step "
             f"{m['first_nonfinite_step']}" + ("; the others trained on" if ok else "")
             for m in summary["members"] if m["status"] == "diverged"]
    where = f"; records in {out_dir}" if out_dir is not None else ""
    timing = f" in {summary['wall_seconds']:.1f} s" if "wall_seconds" in summary else ""
    if len(summary["members"]) == 1:
        lines.append(f"final test accuracy {summary['final_test_accuracy']:.4f} after "
                     f"{summary['steps']} steps{timing}{where}")
        return lines
    if not ok:  # every member diverged: the warnings are all there is to say
        return lines
    best = max(ok, key=lambda m: m["final_test_accuracy"])
    accs = [m["final_test_accuracy"] for m in ok]
    lines.append(f"best member (seed {best['seed']}, lr {best['learning_rate']:g}): final test "
                 f"accuracy {best['final_test_accuracy']:.4f} after {summary['steps']} steps; "
                 f"{len(ok)} members {min(accs):.4f}-{max(accs):.4f}{timing}{where}")
    return lines


def train_and_evaluate(config: Config, *, out_dir: str | None = None,
                       dataset: data.Dataset | None = None, resume: bool = False,
                       overwrite: bool = False, quiet: bool = False, devices=None, eval_device=None,
                       started: float | None = None, reporter: Reporter | None = None) -> Result:
    """Run the experiment described by ``config``; returns ``Result(state, history, summary)``.

    ``out_dir``: where records, figures and checkpoints go (None: nothing is written).
    A folder that already holds a run is refused unless ``resume`` (continue it from
    its latest checkpoint) or ``overwrite`` (clear its files first).
    ``dataset``: arrays to use instead of loading ``config.dataset`` through TFDS.
    ``devices``: where the model trains (default: every device). ``eval_device``: a
    device of its own that scores the test set while the next chunk trains (the model
    must then train on one device); default: the training devices.
    ``started``: ``time.perf_counter()`` at process start, for the startup timing.
    """
    clock = {"started": time.perf_counter() if started is None else started}
    with _signals() as stop, contextlib.ExitStack() as held:
        out_dir, replace = _prepare_folder(config, out_dir, resume=resume, overwrite=overwrite,
                                           held=held)
        dataset = dataset or data.load(config.dataset, data_dir=config.data_dir,
                                       manual_dir=config.manual_dir, train_split=config.train_split,
                                       test_split=config.test_split, progress=not quiet)
        clock["data_loaded"] = time.perf_counter()
        placement, state, history, progs = _prepare(config, dataset, devices, eval_device)
        clock["compiled"] = time.perf_counter()
        _stop_if_signalled(stop, "during start-up: nothing was trained and nothing written"
                           + (f"; the run in {out_dir} is as it was" if replace else ""))
        if replace:  # only now that the new run has passed every check and compiled
            runs.clear_run(out_dir)
        # Opened at its first use (Orbax takes about as long to import as JAX).
        mngr = (functools.cache(lambda: checkpoint.manager(runs.RunFiles.under(out_dir).checkpoints))
                if out_dir is not None and jax.process_count() == 1 else None)
        # Needed only at the end: imported while training runs (``_import_in_background``).
        importer = _import_in_background(*[m for m, used in (("orbax.checkpoint", mngr is not None),
                                                             ("jaxmlp.plot", out_dir is not None)) if used])
        try:
            if resume:
                state, history = placement.put_state(checkpoint.restore(mngr(), state, history))
                if out_dir is not None:  # what --resume may change (RESUMABLE) holds from now on
                    records.atomic_write_json(runs.RunFiles.under(out_dir).config, config.to_dict())
            else:
                # Step 0 (``record`` donates its first argument, so it gets a copy).
                history, _ = progs.record(loop.copy_tree(state), state, history, progs.no_metrics)
                state = progs.guard(state, state, progs.no_metrics)
                if out_dir is not None:
                    records.atomic_write_json(runs.RunFiles.under(out_dir).config, config.to_dict())
            reporter = reporter or Reporter(quiet=quiet)
            outcome = _run(config, state, history, progs, mngr, reporter, stop,
                           len(dataset.train_labels))
            clock["trained"] = time.perf_counter()
            importer.join()  # long done by now; no import may be half way when plot forks
            summary = _summarize(config, outcome, dataset, placement, progs.beside, clock)
            if out_dir is not None:
                summary = write_records(out_dir, config, outcome, dataset, summary, mngr, clock)
            if _opened(mngr):
                mngr().close()
        finally:
            importer.join()  # no import may still be running when the interpreter shuts down
    return _finish(config, outcome, summary, out_dir, stop)


# Phases -------------------------------------------------------------------------

def _prepare_folder(config: Config, out_dir, *, resume: bool, overwrite: bool,
                    held: contextlib.ExitStack):
    """Check ``out_dir`` and hold it for this run (``runs.locked``, until ``held`` closes).
    Returns (out_dir or None where this process writes nothing, whether the run in it is to
    be replaced: ``overwrite`` clears it only once the new run has started)."""
    if jax.process_count() > 1:
        # Many hosts: every process trains; only the first writes records, and checkpoints
        # (which would need every process to write its shards) are not supported yet.
        if resume or config.checkpoint_every:
            raise ConfigError("--resume and --checkpoint-every are not supported with several processes")
        if jax.process_index() != 0:
            return None, False
    if out_dir is None:
        return None, False
    files = runs.RunFiles.under(out_dir)
    if resume:
        done = checkpoint.latest_step(files.checkpoints)  # one-line RecordError if unreadable
        if done >= config.steps and _records_complete(files.summary, config.steps):
            raise AlreadyComplete(f"{out_dir} already ran all {config.steps} steps; nothing to do")
    records.check_writable(out_dir, min_free_bytes=_output_bytes(config))
    held.enter_context(runs.locked(out_dir))
    replace = not resume and runs.holds_a_run(out_dir)
    if replace and not overwrite:
        raise records.RecordError(f"{out_dir} already holds a run; continue it with --resume "
                                  f"{out_dir}, or replace it with --overwrite")
    return out_dir, replace


def _records_complete(summary_path, steps: int) -> bool:
    """Whether a run's records were all written after its last step: summary.json, written
    last, says so. A run stopped between its final checkpoint and that write is not."""
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        return summary.get("status") == "complete" and summary.get("steps") == steps
    except (OSError, ValueError, AttributeError):
        return False


class _Programs(NamedTuple):
    """The compiled programs of a run, bound to its data."""

    train: Callable  # state -> (state, metrics): ``eval_every`` fused steps
    guard: Callable  # (start, state, metrics) -> the state the next chunk starts from
    record: Callable  # (start, state, history, metrics) -> (history, report); donates start, history
    no_metrics: dict  # ``record``'s placeholder metrics at step 0
    beside: bool  # whether ``record`` runs on a device of its own, beside training


def _prepare(config: Config, dataset: data.Dataset, devices, eval_device):
    """Place the data and the initial state, and compile the run's programs ahead of time
    (so compile time is measured on its own). Returns (placement, state, history, programs);
    the history lives where ``record`` runs."""
    n_train = len(dataset.train_labels)
    if config.batch_size > n_train:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {n_train} training examples")
    placement = parallel.plan(config.batch_size, len(config.members), devices)
    if eval_device is not None and placement.mode != "single":
        raise ConfigError("a separate eval_device needs a model that trains on one device "
                          f"(devices=[one device]), not {placement.num_devices}")
    to_eval = (lambda tree: tree) if eval_device is None else \
        (lambda tree: jax.device_put(tree, eval_device))
    train_data = placement.put_replicated(loop.Data(
        np.asarray(dataset.train_images), np.asarray(dataset.train_labels, np.int32), None, None))
    # Training batches are gathered as uint8 and scaled inside the step (4x less memory
    # traffic); the test set is scaled once here, which halves each evaluation on CPU.
    test = loop.Data(None, None, np.asarray(dataset.test_images, np.float32) / np.float32(255),
                     np.asarray(dataset.test_labels, np.int32))  # scaled on the host: no compile
    test_data = placement.put_replicated(test) if eval_device is None else to_eval(test)
    state, history, orders = loop.start_run(config, n_train)
    state, history = placement.put_state((state, history))
    history = to_eval(history)
    orders = placement.put_state(orders) if not config.shares_batches else placement.put_replicated(orders)

    static_run = dict(num_steps=config.eval_every, batch_size=config.batch_size,
                      batch_sharding=placement.batch_sharding, metrics=config.train_metrics,
                      shared_batches=config.shares_batches)
    run_c = loop.run_steps_keeping_input.lower(state, train_data, orders, **static_run).compile()
    no_metrics = loop.nan_metrics(config.eval_every, len(config.members) if config.is_ensemble else None)
    no_metrics = {**placement.put_state({k: no_metrics[k] for k in ("loss", "accuracy")}),
                  "step": placement.put_replicated(no_metrics["step"])}
    guard_c = loop.guard.lower(state, state, no_metrics).compile()
    record_c = loop.compile_record(
        loop.record.lower(to_eval(state), to_eval(state), history, to_eval(no_metrics), test_data,
                          eval_every=config.eval_every, eval_batch_size=config.eval_batch_size),
        next(iter(jax.tree.leaves(history)[0].devices())).platform)
    return placement, state, history, _Programs(
        train=lambda state: run_c(state, train_data, orders),
        guard=guard_c,
        record=lambda start, state, history, metrics: record_c(
            to_eval(start), to_eval(state), history, to_eval(metrics), test_data)[1:],
        no_metrics=no_metrics, beside=eval_device is not None)


class _Outcome(NamedTuple):
    state: train.TrainState
    history: dict  # host arrays up to ``step``
    step: int
    status: str  # complete | interrupted | diverged
    resumed_from: int
    steps_run: int  # by this process
    train_seconds: float
    eval_seconds: float
    predicted: np.ndarray | None  # a single model's test-set classes at its last evaluation


def _run(config, state, history, progs: _Programs, mngr, reporter, stop, n_train):
    first = step = int(np.max(jax.device_get(state.step)))
    predicted = None
    reporter.start(config, start_step=step, examples_per_epoch=n_train)
    seconds = {"train": 0.0, "eval": 0.0}
    status = "complete"
    t0 = time.perf_counter()
    chunk = (state, *progs.train(state)) if step < config.steps else None  # (start, state, metrics)
    if chunk is not None:
        jax.block_until_ready(chunk[2])
        seconds["train"] += time.perf_counter() - t0
    try:
        while chunk is not None:
            t0 = time.perf_counter()
            start, end, metrics = chunk
            state = progs.guard(start, end, metrics)
            history, report = progs.record(start, end, history, metrics)
            predicted = report.pop("predicted", None)  # stays on the device; fetched at the end
            # The next chunk trains while this one is scored; if the run stops here, it is
            # dropped unread.
            chunk = (state, *progs.train(state)) if step + config.eval_every < config.steps else None
            # Wait first for what finishes first, so that each wait times one program:
            # training, when scoring runs beside it; scoring, when it runs first on the
            # same device. The seconds add up to the loop's.
            waits = {"train": chunk[2] if chunk is not None else None, "eval": report}
            for name in ("train", "eval") if progs.beside else ("eval", "train"):
                jax.block_until_ready(waits[name])
                t1 = time.perf_counter()
                seconds[name], t0 = seconds[name] + t1 - t0, t1
            report = jax.device_get(report)
            step = int(report["step"])
            alive = np.atleast_1d(report["alive"])
            reporter.chunk(step, np.atleast_1d(report["test_accuracy"]),
                           np.atleast_1d(report["test_loss"]), alive,
                           **{k: report[k] for k in ("train_loss", "train_accuracy",
                                                     "weight_percentiles", "bias_percentiles")})
            if not alive.any():
                status = "diverged"
                break
            if mngr is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint.save(mngr(), state, history)
            if stop.signum is not None:
                status = "interrupted"
                break
    finally:
        reporter.close()
    if mngr is not None and status != "diverged":
        checkpoint.save(mngr(), state, history)  # frozen members hold their last finite state
    return _Outcome(state, hist.truncate(history, step), step, status, first, step - first,
                    seconds["train"], seconds["eval"], None if predicted is None else np.asarray(predicted))


def _summarize(config: Config, outcome: _Outcome, dataset: data.Dataset, placement, eval_beside: bool,
               clock) -> dict:
    h = outcome.history
    first_bad = hist.first_nonfinite_steps(h)
    final_best = hist.summarize(h)
    member_rows = []
    for i, (seed, lr) in enumerate(config.members):
        pick = (lambda v: v) if not config.is_ensemble else (lambda v: v[i])
        member_rows.append({
            "seed": seed, "learning_rate": lr,
            "status": "diverged" if first_bad[i] is not None else outcome.status,
            "first_nonfinite_step": first_bad[i],
            "final_test_accuracy": pick(final_best["final_test_accuracy"]),
            "best_test_accuracy": pick(final_best["best_test_accuracy"]),
        })
    return {
        "status": outcome.status,
        **final_best,
        "resumed_from_step": outcome.resumed_from,
        "steps_this_process": outcome.steps_run,
        "config": config.to_dict(),
        "members": member_rows,
        "data": {"name": dataset.name, "version": dataset.version, "source": dataset.source,
                 "train_split": getattr(dataset, "train_split", config.train_split),
                 "test_split": getattr(dataset, "test_split", config.test_split),
                 "train_examples": int(len(dataset.train_labels)),
                 "test_examples": int(len(dataset.test_labels))},
        "num_params": model.num_params(outcome.state.params) // len(config.members),  # per model
        # eval_beside: the test set is scored on a device of its own, while training goes on.
        "placement": {"mode": placement.mode, "num_devices": placement.num_devices,
                      "eval_beside": eval_beside},
        "timings": {
            "startup_seconds": clock["data_loaded"] - clock["started"],
            "compile_seconds": clock["compiled"] - clock["data_loaded"],
            "train_seconds": outcome.train_seconds,
            "eval_seconds": outcome.eval_seconds,
        },
    }


def write_records(out_dir, config: Config, outcome: _Outcome, dataset: data.Dataset, summary: dict,
                  mngr, clock) -> dict:
    """history.npz, misclassified.npz, the figures and summary.json (last), each atomically."""
    from jaxmlp import plot  # matplotlib is only needed once a run ends

    files = runs.RunFiles.under(out_dir)
    records.atomic_save_npz(files.history, outcome.history)
    wrong = None
    if outcome.predicted is not None:  # a single model, scored by its last evaluation
        wrong = train.pick_misclassified(outcome.predicted, dataset.test_images, dataset.test_labels)
    elif not config.is_ensemble:  # a resume that only completes the records: no evaluation ran
        wrong = train.misclassified(outcome.state, dataset.test_images, dataset.test_labels)
    if wrong is not None:
        records.atomic_save_npz(files.misclassified, wrong)
    labels = [f"seed {s}, lr {lr:g}" for s, lr in config.members] if config.is_ensemble else None
    figures = plot.plot_history(outcome.history, out_dir, misclassified=wrong, members=labels)
    written = [files.config, files.history, *([files.misclassified] if wrong is not None else []),
               *figures, *([files.checkpoints] if _opened(mngr) else [])]
    clock["written"] = time.perf_counter()
    summary = {**summary, "environment": records.environment(),
               "files": {os.path.basename(os.fspath(p)): os.path.abspath(p) for p in written}}
    timings = summary["timings"]
    timings["write_seconds"] = clock["written"] - clock["trained"]
    timings["total_seconds"] = summary["wall_seconds"] = clock["written"] - clock["started"]
    # The step-0 evaluation, config.json and the last checkpoint: so the parts add up.
    timings["other_seconds"] = timings["total_seconds"] - sum(
        timings[k] for k in ("startup_seconds", "compile_seconds", "train_seconds",
                             "eval_seconds", "write_seconds"))
    records.atomic_write_json(files.summary, summary)
    return summary


def _finish(config: Config, outcome: _Outcome, summary: dict, out_dir, stop) -> Result:
    result = Result(outcome.state, outcome.history, summary)
    if outcome.status == "diverged":
        saved = f"; the record is saved in {out_dir}" if out_dir is not None else ""
        if config.is_ensemble:
            raise Diverged(f"training diverged: every member's loss or parameters became "
                           f"non-finite; lower the learning rates{saved}", summary)
        bad = summary["members"][0]["first_nonfinite_step"]
        raise Diverged(f"training diverged: the loss or parameters turned non-finite at step "
                       f"{bad} (learning rate {config.learning_rate:g}); lower --learning-rate{saved}",
                       summary)
    where = out_dir if out_dir is not None else "(no --out, so nothing was saved)"
    if outcome.status == "interrupted":
        raise Interrupted(f"interrupted at step {outcome.step}; saved to {where}; continue with: "
                          f"python scripts/train.py --resume {where}", stop.signum)
    if stop.signum is not None:  # a signal while the final records were written: they finished
        raise Interrupted(f"interrupted after training had finished; the records were completed "
                          f"in {where}", stop.signum)
    return result


def _import_in_background(*modules: str) -> threading.Thread:
    # Orbax and matplotlib take about as long to import as JAX; a thread imports them while
    # the model trains, when the main thread only waits for the device. Started earlier it
    # slowed start-up by competing for the GIL (measured: whole runs 0.2-0.3 s faster).
    # Python's import lock makes a later ``import`` of the same module wait for this one.
    thread = threading.Thread(target=lambda: [importlib.import_module(m) for m in modules],
                              daemon=True)
    thread.start()
    return thread


def _opened(mngr) -> bool:
    """Whether the lazily opened checkpoint manager (a ``functools.cache``) was opened."""
    return mngr is not None and mngr.cache_info().currsize > 0


def _stop_if_signalled(stop, when: str) -> None:
    if stop.signum is not None:
        raise Interrupted(f"interrupted {when}", stop.signum)


def _output_bytes(config: Config) -> int:
    """A generous estimate of what a run writes: checkpoints and history (float32 parameters,
    Adam's two moments, and about four numbers per step, per model), plus the figures."""
    widths = (model.NUM_INPUTS, *config.hidden, model.NUM_CLASSES)
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    per_model = 4 * (3 * params + 4 * config.steps)
    return len(config.members) * (checkpoint.KEEP + 2) * per_model + 16 * 2**20


SECOND_SIGNAL_AFTER = 1.0
"""Seconds after the first signal before another one stops the run at once. One stop can
arrive twice: GNU ``timeout`` signals the process and then its whole process group."""


@contextlib.contextmanager
def _signals():
    """Turn SIGINT/SIGTERM into a flag checked at phase and chunk boundaries (main thread
    only); a second signal, ``SECOND_SIGNAL_AFTER`` seconds or more after the first, stops
    at once (``StoppedAtOnce``)."""
    stop = types.SimpleNamespace(signum=None, at=None)

    def handler(signum, _frame):
        if stop.signum is not None:
            if time.monotonic() - stop.at >= SECOND_SIGNAL_AFTER:
                raise StoppedAtOnce(signum)
            return  # the same stop, delivered twice
        stop.signum, stop.at = signum, time.monotonic()

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
