"""Run folders: the files a run leaves (``RunFiles``), reading them, clearing and creating folders.

One run per folder. ``RunFiles`` names every file a run may write there;
``load_run`` reads a finished or interrupted run, ``read_config`` the config of
one to resume; ``holds_a_run`` and ``clear_run`` decide what an ``--out`` that
already holds a run means; ``new_run_dir`` makes ``runs/<UTC time>-<dataset>``
and points ``runs/latest`` to it. Every file is written through
``jaxmlp.records``'s atomic writers; errors are its one-line ``RecordError``.

Imports only the standard library, numpy, ``jaxmlp.records`` and
``jaxmlp.history`` (numpy only): reading runs never pays for jax or tensorflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from jaxmlp import history as hist
from jaxmlp.records import RecordError, one_line, remove_stale_temp_files


# --- names ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """Everything a run folder holds: ``FILES`` (below) has the names,
    ``RunFiles.under(run_dir)`` the paths, field by field."""

    config: str | Path = "config.json"  # the Config, written before training
    history: str | Path = "history.npz"  # metrics, laid out as jaxmlp.history.SCHEMA says
    summary: str | Path = "summary.json"  # final and best metrics, environment, timings, files
    misclassified: str | Path = "misclassified.npz"  # test digits the final model gets wrong
    checkpoints: str | Path = "checkpoints"  # orbax checkpoints: a directory
    accuracy_png: str | Path = "accuracy.png"
    cross_entropy_png: str | Path = "cross_entropy.png"
    dashboard_png: str | Path = "dashboard.png"

    @classmethod
    def under(cls, run_dir: str | os.PathLike) -> RunFiles:
        """The paths of the files in ``run_dir``."""
        return cls(*(Path(run_dir) / name for name in cls.all_names()))

    @classmethod
    def all_names(cls) -> tuple[str, ...]:
        """Every name a run folder may hold, ``checkpoints`` (a directory) included."""
        return astuple(cls())

    @classmethod
    def dashboards(cls, runs: list[str]) -> list[str]:
        """Distinct file-safe names for the dashboards of several runs drawn into one
        folder: ``dashboard-<run>.png``."""
        stem, suffix = os.path.splitext(cls.dashboard_png)
        names: list[str] = []
        for run in runs:
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", run).strip("_") or "run"
            while f"{stem}-{name}{suffix}" in names:  # runs that differ only in unsafe characters
                name += "_"
            names.append(f"{stem}-{name}{suffix}")
        return names


FILES = RunFiles()
"""The names of a run folder's files."""


def run_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """Short distinct names for run folders: the last path parts that tell them apart."""
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.fspath(d) for d in run_dirs]  # the same folder given twice


# --- reading ------------------------------------------------------------------


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        # Our own handle: np.load leaks the one it opens when the zip is corrupt.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except Exception as e:  # zipfile, pickle and format errors all mean "unreadable"
        raise RecordError(one_line(f"cannot read {path}: {type(e).__name__}: {e}")) from e


Arrays = dict[str, np.ndarray]


def load_run(run_dir: str | os.PathLike) -> tuple[dict | None, Arrays, Arrays | None]:
    """Read a run directory: ``(summary or None, history, misclassified or None)``.

    ``history.npz`` is required (``RecordError`` if missing, unreadable or
    without the arrays ``history.REQUIRED``);
    ``summary.json`` and ``misclassified.npz`` are optional, since a run stopped
    early or recorded by an older version may lack them.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RecordError(f"run directory {run} does not exist")
    paths = RunFiles.under(run)
    if not paths.history.is_file():
        raise RecordError(
            f"no {FILES.history} in {run}: not a jaxmlp run directory, or the run saved nothing yet")
    history = _load_npz(paths.history)
    missing = [k for k in hist.REQUIRED if k not in history]
    if missing:
        raise RecordError(f"{paths.history} lacks the arrays {', '.join(missing)}: not a jaxmlp history")
    summary = None
    if paths.summary.is_file():
        try:
            summary = json.loads(paths.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RecordError(one_line(f"cannot read {paths.summary}: {e}")) from e
    misclassified = _load_npz(paths.misclassified) if paths.misclassified.is_file() else None
    return summary, history, misclassified


# --- clearing and creating: one run per folder -------------------------------------


def holds_a_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds any file a run writes (``RunFiles``)."""
    return any(os.path.lexists(p) for p in astuple(RunFiles.under(run_dir)))


def is_run_folder(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a training run's own files (config, history, summary or
    checkpoints), not only figures (``scripts/plot.py`` writes those anywhere)."""
    paths = RunFiles.under(run_dir)
    return any(os.path.lexists(p) for p in (paths.config, paths.history, paths.summary,
                                            paths.checkpoints))


def comparison_dashboards(run_dir: str | os.PathLike) -> list[Path]:
    """The per-run dashboards (``RunFiles.dashboards``) a comparison left in ``run_dir``."""
    stem, suffix = os.path.splitext(FILES.dashboard_png)
    return sorted(Path(run_dir).glob(f"{stem}-*{suffix}")) if Path(run_dir).is_dir() else []


def clear_run(run_dir: str | os.PathLike) -> None:
    """Delete every file and folder a run writes in ``run_dir``, the dashboards of a
    comparison drawn there, and writers' leftovers; anything else the user keeps there
    stays."""
    for p in [*astuple(RunFiles.under(run_dir)), *comparison_dashboards(run_dir)]:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
    remove_stale_temp_files(run_dir)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold ``run_dir`` (an existing folder) for one run: a second process that tries
    while the first holds it gets a one-line ``RecordError``. An advisory ``flock`` on
    the folder itself: no file is left behind, and the kernel lets go when the process
    ends, however it ends. Where folders cannot be locked (no ``fcntl``, some network
    filesystems) it holds nothing."""
    try:
        import fcntl
        fd = os.open(run_dir, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecordError(f"{run_dir} is in use by another jaxmlp run; wait for it to end, "
                              f"or choose another folder") from None
        except OSError:  # this filesystem does not lock folders
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def read_config(run_dir: str | os.PathLike) -> dict:
    """The ``config.json`` of a run folder as a dict; one-line ``RecordError`` otherwise."""
    path = RunFiles.under(run_dir).config
    if not Path(run_dir).is_dir():
        raise RecordError(f"run folder {run_dir} " + ("is not a folder" if os.path.lexists(run_dir)
                                                       else "does not exist"))
    if not path.is_file():
        raise RecordError(f"{run_dir} is not a jaxmlp run folder: it has no {FILES.config}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(one_line(f"cannot read {path}: {e}")) from e
    if not isinstance(config, dict):
        raise RecordError(f"{path} is malformed: expected a JSON object of config fields")
    return config


LATEST = "latest"
"""The name, beside the runs, that points to the newest (a symlink)."""


_STAMPED = re.compile(r"^\d{8}-\d{6}-")


def new_run_dir(root: str | os.PathLike, dataset: str) -> str:
    """Create ``root/<UTC time>-<dataset>`` (never an existing folder) and point
    ``root/latest`` to it; returns its path."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            run = root / (f"{stamp}-{dataset}" + (f"-{n}" if n else ""))
            try:
                run.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise RecordError(f"cannot find a free run folder name under {root}")
    except OSError as e:  # e.g. 'runs' is a file, or the working folder is read-only
        raise RecordError(one_line(f"cannot make a run folder under {os.path.abspath(root)}: "
                                   f"{e.strerror or e}; choose one with --out DIR")) from e
    _point_latest(root, run.name)
    return os.fspath(run)


def _point_latest(root: Path, name: str | None) -> None:
    """``root/latest`` -> ``name`` (relative: the runs folder may be moved); None removes it.
    A user's own file or folder named 'latest' is left alone."""
    link = root / LATEST
    if os.path.lexists(link) and not link.is_symlink():
        return
    if name is None:
        link.unlink(missing_ok=True)
        return
    tmp = root / f".{LATEST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.symlink(name, tmp)
        os.replace(tmp, link)
    except OSError:  # no symlinks here (some filesystems): the runs stay reachable by name
        Path(tmp).unlink(missing_ok=True)


def discard_if_empty(run_dir: str | os.PathLike) -> None:
    """Remove a run folder ``new_run_dir`` made that is still empty (the run failed before
    writing anything) and point ``latest`` back to the newest run left; a runs folder
    left with nothing in it goes too."""
    run = Path(run_dir)
    if not run.is_dir() or any(run.iterdir()):
        return
    run.rmdir()
    link = run.parent / LATEST
    if link.is_symlink() and os.readlink(link) == run.name:
        left = sorted(p.name for p in run.parent.iterdir()  # names start with their UTC time
                      if p.is_dir() and not p.is_symlink() and _STAMPED.match(p.name))
        _point_latest(run.parent, left[-1] if left else None)
    with contextlib.suppress(OSError):  # not empty: something else lives there
        run.parent.rmdir()
