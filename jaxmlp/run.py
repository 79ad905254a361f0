"""The whole experiment on the host: folder, data, checks, placement, compile, run, records.

``train_and_evaluate(config, init=, dataset=)`` is the one call behind
``scripts/train.py`` and the way to run your own model through everything.
Between chunks of ``eval_every`` fused steps the host reads a few values (the
reporting point), reports, saves checkpoints and honours SIGINT/SIGTERM;
everything else stays on the device. The next chunk is dispatched before the host
waits for this one's scores.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import checkpoint, data, loop, model, parallel, records, train
from jaxmlp import history as hist
from jaxmlp.config import Config, ConfigError
from jaxmlp.report import Reporter


class Interrupted(Exception):
    """The run stopped on a signal at a chunk boundary; ``str`` says what was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal: the run stopped where it was."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Diverged(RuntimeError):
    """Every model's loss or parameters became non-finite; the records are saved."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


class AlreadyComplete(Exception):
    """``resume`` found a run that had finished; nothing was changed."""


# Errors whose message is one line meant for the user (scripts print them, no traceback).
EXPECTED_ERRORS = (ConfigError, data.DataError, records.RecordError, parallel.PlacementError,
                   Diverged)


class Result(NamedTuple):
    state: train.TrainState  # the final state (a leading model axis for ensembles)
    history: dict  # host arrays, up to the last step run
    summary: dict  # what summary.json holds (also when nothing is written)


def train_and_evaluate(config: Config, *, init: loop.Init | None = None,
                       dataset: data.Dataset | None = None, out_dir=None, resume: bool = False,
                       overwrite: bool = False, quiet: bool = False,
                       reporter: Reporter | None = None, devices=None) -> Result:
    """Run the experiment ``config`` describes; returns ``Result(state, history, summary)``.

    ``init(key) -> TrainState`` gives a state at step 0 (your model, optimizer, loss
    and metrics); default: the MLP the Config describes. ``dataset``: arrays to use
    instead of loading ``config.dataset`` through TFDS. ``out_dir``: where records,
    figures and checkpoints go (None: nothing is written); a folder that holds a run
    is refused unless ``resume`` (continue from its latest checkpoint, with the same
    ``init``) or ``overwrite`` (replace it, once the new run has started).
    """
    clock = {"started": time.perf_counter()}
    with _signals() as stop, contextlib.ExitStack() as held:
        out_dir, replace = _folder(config, out_dir, resume, overwrite, held)
        dataset = dataset if dataset is not None else data.load(
            config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
            train_split=config.train_split, test_split=config.test_split, progress=not quiet)
        model_name = f"init {getattr(init, '__qualname__', repr(init))}" if init else "mlp (from the config)"
        init = init or loop.mlp_init(config, np.shape(dataset.train_images)[1:], _num_classes(dataset))
        _check(config, init, dataset)
        clock["loaded"] = time.perf_counter()
        placement, state, history, progs = _compile(config, init, dataset, devices)
        clock["compiled"] = time.perf_counter()
        if _stopping(stop):
            raise Interrupted("interrupted during start-up: nothing was trained or written", stop.signum)
        ckpt = None
        if out_dir is not None:
            if replace:  # only now that the new run has passed every check and compiled
                records.clear_run(out_dir)
            parallel.gather(0)  # many processes: the others open the folder once it is ready
            ckpt = checkpoint.manager(f"{out_dir}/{records.CHECKPOINTS}")
        if resume:
            state, history = placement.put_state(checkpoint.restore(ckpt, state, history))
        else:  # step 0: the same program scores the initial model (it donates its 2nd arg)
            state, history, _ = progs.record(state, jax.tree.map(jnp.copy, state), history,
                                             progs.no_metrics, progs.all_alive)
        if out_dir is not None and jax.process_index() == 0:
            records.atomic_write_json(f"{out_dir}/{records.CONFIG}", config.to_dict())
        reporter = reporter or Reporter(quiet=quiet)
        outcome = _loop(config, state, history, progs, ckpt, reporter, stop, len(dataset.train_labels))
        clock["trained"] = time.perf_counter()
        summary = _summary(config, model_name, outcome, dataset, placement, clock)
        if out_dir is not None and jax.process_index() == 0:
            summary = _write(out_dir, config, outcome, dataset, summary, clock)
        if ckpt is not None:
            ckpt.close()
    return _finish(config, outcome, summary, out_dir, stop)


# Phases -------------------------------------------------------------------------

def _folder(config: Config, out_dir, resume: bool, overwrite: bool, held):
    """Check ``out_dir`` and hold it for this run. Returns (out_dir; whether the run in it
    is to be replaced). Many processes share process 0's folder: it alone makes, holds and
    clears it and writes the records; they agree on whether it could."""
    if out_dir is None:
        if resume:
            raise ConfigError("resume needs the run's folder (out_dir)")
        return None, False
    if resume:
        done = checkpoint.latest_step(f"{out_dir}/{records.CHECKPOINTS}")  # one-line error if none
        summary = f"{out_dir}/{records.SUMMARY}"
        with contextlib.suppress(records.RecordError):
            s = records.read_json(summary)
            if done >= config.steps and s.get("status") == "complete" and s.get("steps") == config.steps:
                raise AlreadyComplete(f"{out_dir} already ran all {config.steps} steps; nothing to do")
    replace = False
    if jax.process_index() == 0:
        try:
            records.make_folder(out_dir)
            held.enter_context(records.locked(out_dir))
            replace = not resume and records.holds_a_run(out_dir)
            if replace and not overwrite:
                raise records.RecordError(f"{out_dir} already holds a run; continue it with "
                                          f"--resume {out_dir}, or replace it with --overwrite")
        except records.RecordError:
            parallel.gather(0)  # the other processes stop too
            raise
    if not parallel.gather(1).all():
        raise records.RecordError(f"process 0 could not hold {out_dir}; its message says why")
    return out_dir, replace


def _num_classes(dataset: data.Dataset) -> int:
    """The default MLP's outputs: one per class name, else the 10 of the MNIST family (never
    read off the labels, which would hide a bad label)."""
    return len(dataset.class_names) if dataset.class_names else 10


def _check(config: Config, init, dataset: data.Dataset) -> None:
    """One-line ``ConfigError``s before anything trains: shapes, labels, classes, sweeps."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    tr, te = np.shape(dataset.train_images), np.shape(dataset.test_images)
    dtype, test_dtype = np.asarray(dataset.train_images).dtype, np.asarray(dataset.test_images).dtype
    for split, images, labels in (("train", tr, dataset.train_labels), ("test", te, dataset.test_labels)):
        need(len(images) >= 1 and np.ndim(labels) == 1 and len(labels) == images[0],
             f"{split} labels must be (N,) with one label per image; images {images}, "
             f"labels {np.shape(labels)}")
        need(np.issubdtype(np.asarray(labels).dtype, np.integer),
             f"{split} labels must be integers, got {np.asarray(labels).dtype}")
    need(tr[1:] == te[1:] and dtype == test_dtype,
         f"train and test images disagree: {tr[1:]} {dtype} against {te[1:]} {test_dtype}")
    need(config.batch_size <= tr[0],
         f"batch_size {config.batch_size} exceeds the {tr[0]} training examples")
    sweep = bool(config.learning_rates)
    try:
        state = jax.eval_shape(lambda k: init(k) if not sweep else
                               train.with_learning_rate(init(k), 0.1), jax.random.key(0))
    except ValueError as e:
        if "inject_hyperparams" in str(e):
            raise ConfigError(f"{e}; or drop --learning-rates") from None
        raise
    batch = jax.ShapeDtypeStruct((2, *tr[1:]), dtype)
    try:
        logits = jax.eval_shape(lambda s, x: train.forward(s, s.params, x, train=False)[0], state, batch)
    except Exception as e:
        why = records.one_line(e).split(". ")[0][:200]
        raise ConfigError(f"the model cannot take images of shape {tr[1:]} ({dtype}): {why}") from None
    need(len(logits.shape) == 2 and logits.shape[0] == 2,
         f"the model must give logits (B, classes) for images (B, {', '.join(map(str, tr[1:]))}); "
         f"got {tuple(logits.shape)}")
    classes = logits.shape[1]
    for split, labels in (("train", dataset.train_labels), ("test", dataset.test_labels)):
        lo, hi = int(np.min(labels)), int(np.max(labels))
        need(0 <= lo and hi < classes, f"{split} labels span {lo}..{hi}, but the model gives "
                                       f"{classes} classes (labels must lie in 0..{classes - 1})")


class _Programs(NamedTuple):
    train: object  # state -> (state, metrics): eval_every fused steps
    record: object  # (start, state, history, metrics, alive) -> (state, history, report)
    no_metrics: dict  # record's placeholder metrics at step 0
    all_alive: jax.Array
    put: object  # places a state-like tree as the programs expect it


def _compile(config: Config, init, dataset: data.Dataset, devices):
    """Place the data and the initial state; compile the run's two programs ahead of time."""
    placement = parallel.plan(config.batch_size, len(config.members), devices)
    d = placement.put_replicated(loop.Data(
        np.asarray(dataset.train_images), np.asarray(dataset.train_labels, np.int32),
        np.asarray(dataset.test_images), np.asarray(dataset.test_labels, np.int32)))
    state, history, orders = loop.init_run(
        init, **loop.members(config), num_steps=config.steps, eval_every=config.eval_every,
        num_examples=len(dataset.train_labels), batch_size=config.batch_size,
        ensemble=config.is_ensemble)
    state, history, orders = placement.put_state((state, history, orders))
    no_metrics = loop.nan_metrics(state, config.eval_every)
    no_metrics = {**placement.put_state({k: v for k, v in no_metrics.items() if k != "step"}),
                  "step": placement.put_replicated(no_metrics["step"])}
    alive = placement.put_state(np.ones(state.step.shape, bool))
    static = dict(num_steps=config.eval_every, batch_size=config.batch_size,
                  batch_sharding=placement.batch_sharding, metrics=config.train_metrics)
    train_c = loop.fused_steps.lower(state, d, orders, **static).compile()
    record_c = loop.record.lower(state, state, history, no_metrics, alive, d,
                                 eval_every=config.eval_every,
                                 eval_batch_size=config.eval_batch_size).compile()
    return placement, state, history, _Programs(
        train=lambda s: train_c(s, d, orders),
        record=lambda start, s, h, m, a: record_c(start, s, h, m, a, d),
        no_metrics=no_metrics, all_alive=alive, put=placement.put_state)


class _Outcome(NamedTuple):
    state: train.TrainState
    history: dict  # host arrays up to ``step``
    step: int
    status: str  # complete | interrupted | diverged
    resumed_from: int
    predicted: np.ndarray | None  # a single model's test-set classes at its last evaluation


def _loop(config: Config, state, history, progs: _Programs, ckpt, reporter, stop, n_train):
    step = first = int(np.max(parallel.host(state.step)))
    alive = progs.all_alive
    if first:  # a resumed run: members that diverged before stay dead
        bad = hist.first_nonfinite_steps(hist.to_numpy(parallel.host(history)))
        alive = progs.put(np.asarray([b is None for b in bad]).reshape(np.shape(alive)))
    status, predicted = "complete", None
    reporter.start(config, start_step=step, examples_per_epoch=n_train,
                   member_names=config.member_names if config.is_ensemble else None)
    chunk = (state, *progs.train(state)) if step < config.steps else None
    try:
        while chunk is not None:
            start, end, metrics = chunk
            state, history, report = progs.record(start, end, history, metrics, alive)
            alive, predicted = report["alive"], report.pop("predicted", None)
            # The next chunk trains while the host reads this one's report; a stop drops it.
            chunk = (state, *progs.train(state)) if step + config.eval_every < config.steps else None
            report = {k: np.asarray(v) for k, v in parallel.host(report).items()}
            step = int(report.pop("step"))
            if not config.is_ensemble:  # one model: a model axis of 1, as the reporter expects
                report = {k: v[None] for k, v in report.items()}
            reporter.chunk(step, report)
            if not report["alive"].any():
                status = "diverged"
                break
            if ckpt is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoint.save(ckpt, state, history)
            if _stopping(stop):
                status = "interrupted"
                break
    finally:
        reporter.close()
    if ckpt is not None and status != "diverged":
        checkpoint.save(ckpt, state, history)  # dead members hold their last finite state
    return _Outcome(state, hist.truncate(parallel.host(history), step), step, status, first,
                    None if predicted is None else np.asarray(predicted))


def _summary(config: Config, model_name: str, outcome: _Outcome, dataset: data.Dataset, placement,
             clock) -> dict:
    h = outcome.history
    first_bad = hist.first_nonfinite_steps(h)
    results = hist.summarize(h)
    pick = (lambda v, i: v[i]) if config.is_ensemble else (lambda v, i: v)
    members = [{"name": name, "seed": seed, "learning_rate": lr,
                "status": "diverged" if first_bad[i] is not None else outcome.status,
                "first_nonfinite_step": first_bad[i],
                "final_test_accuracy": pick(results["final_test_accuracy"], i),
                "best_test_accuracy": pick(results["best_test_accuracy"], i)}
               for i, (name, (seed, lr)) in enumerate(zip(config.member_names, config.members))]
    extra = {f"final_test_{k}": h[f"test_{k}"][..., -1] for k in hist.metric_names(h)[2:]}  # yours
    return {"status": outcome.status, **results, **extra,
            "resumed_from_step": outcome.resumed_from, "config": config.to_dict(),
            "model": model_name,
            "members": members,
            "data": {"name": dataset.name, "version": dataset.version, "source": dataset.source,
                     "train_split": dataset.train_split, "test_split": dataset.test_split,
                     "train_examples": len(dataset.train_labels),
                     "test_examples": len(dataset.test_labels),
                     "image_shape": list(np.shape(dataset.train_images)[1:]),
                     "class_names": list(dataset.class_names) if dataset.class_names else None},
            "num_params": model.num_params(outcome.state.params) // len(config.members),
            "placement": {"mode": placement.mode, "num_devices": placement.num_devices},
            "timings": {"startup_seconds": clock["loaded"] - clock["started"],
                        "compile_seconds": clock["compiled"] - clock["loaded"],
                        "train_seconds": clock["trained"] - clock["compiled"]}}


def _write(out_dir, config: Config, outcome: _Outcome, dataset: data.Dataset, summary: dict,
           clock) -> dict:
    """history.npz, misclassified.npz, the figures, then summary.json, each atomically."""
    from jaxmlp import plot  # matplotlib is needed only once a run ends

    records.atomic_save_npz(f"{out_dir}/{records.HISTORY}", outcome.history)
    wrong = None
    if not config.is_ensemble:
        predicted = outcome.predicted
        if predicted is None:  # a resume that only completes the records: no evaluation ran
            state = jax.tree.map(lambda x: x.addressable_data(0), outcome.state)  # this host's copy
            predicted = np.asarray(train.predict(state, jnp.asarray(dataset.test_images)))
        wrong = _misclassified(predicted, dataset)
        records.atomic_save_npz(f"{out_dir}/{records.MISCLASSIFIED}", wrong)
    plot.plot_history(outcome.history, out_dir, misclassified=wrong,
                      members=config.member_names if config.is_ensemble else None,
                      class_names=dataset.class_names,
                      title=f"{str(out_dir).rstrip('/').split('/')[-1]}: {dataset.name}, {config.preset}")
    clock["written"] = time.perf_counter()
    summary = {**summary, "environment": records.environment(),
               "wall_seconds": clock["written"] - clock["started"]}
    summary["timings"]["write_seconds"] = clock["written"] - clock["trained"]
    records.atomic_write_json(f"{out_dir}/{records.SUMMARY}", summary)
    return summary


def _misclassified(predicted: np.ndarray, dataset: data.Dataset, limit: int = 40) -> dict:
    """The first ``limit`` test images whose predicted class is not their label."""
    labels = np.asarray(dataset.test_labels)
    wrong = np.flatnonzero(predicted != labels)[:limit]
    return {"image": np.asarray(dataset.test_images)[wrong],
            "predicted": predicted[wrong].astype(np.int32), "label": labels[wrong].astype(np.int32)}


def _finish(config: Config, outcome: _Outcome, summary: dict, out_dir, stop) -> Result:
    if outcome.status == "diverged":
        saved = f"; the records are in {out_dir}" if out_dir is not None else ""
        if config.is_ensemble:
            raise Diverged("training diverged: every member's loss or parameters became "
                           f"non-finite; lower the learning rates{saved}", summary)
        raise Diverged(f"training diverged: the loss or parameters turned non-finite at step "
                       f"{summary['members'][0]['first_nonfinite_step']}; lower the learning "
                       f"rate{saved}", summary)
    if outcome.status == "interrupted":
        where = out_dir if out_dir is not None else "(no out_dir: nothing was saved)"
        raise Interrupted(f"interrupted at step {outcome.step}; saved to {where}; continue with "
                          f"--resume {where}", stop.signum)
    return Result(outcome.state, outcome.history, summary)


SECOND_SIGNAL_AFTER = 1.0
"""Seconds after the first signal before a second one stops at once: one stop can arrive
twice (GNU ``timeout`` signals the process, then its process group)."""


def _stopping(stop) -> bool:
    """Whether any process was signalled (one small collective); the others take its number."""
    got = [int(s) for s in parallel.gather(stop.signum or 0) if s]
    stop.signum = stop.signum or next(iter(got), None)
    return bool(got)


@contextlib.contextmanager
def _signals():
    """SIGINT/SIGTERM become a flag read at chunk boundaries (main thread only); a second
    signal stops at once (``StoppedAtOnce``)."""
    stop = type("Stop", (), {"signum": None, "at": 0.0})()

    def handler(signum, _frame):
        if stop.signum is None:
            stop.signum, stop.at = signum, time.monotonic()
        elif time.monotonic() - stop.at >= SECOND_SIGNAL_AFTER:
            raise StoppedAtOnce(signum)

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
