"""Run folders: the files a run leaves, atomic writes, one run per folder.

Every file is written to a hidden temporary name beside its target, flushed, and
``os.replace``-d into place, so a run killed at any moment leaves the old file or
the new one, never a torn one. A folder holds one run: ``holds_a_run`` and
``clear_run`` decide what an ``--out`` with a run in it means, and ``locked``
keeps a second process out while a run holds it. Imports no JAX.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIG, HISTORY, SUMMARY = "config.json", "history.npz", "summary.json"
MISCLASSIFIED, CHECKPOINTS = "misclassified.npz", "checkpoints"
FIGURES = ("accuracy.png", "cross_entropy.png", "dashboard.png")
FILES = (CONFIG, HISTORY, SUMMARY, MISCLASSIFIED, CHECKPOINTS, *FIGURES)
"""Every name a run may write in its folder."""


class RecordError(OSError):
    """A run folder cannot be written or read; the message is one line."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def _atomic_write(path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: the old file stays as it was
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path, obj: Any) -> Path:
    """``obj`` as JSON (non-finite floats as null), atomically."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_save_npz(path, arrays: dict) -> Path:
    """``np.savez`` of ``arrays``, atomically."""
    return _atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic)):
        return _jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json(path) -> dict:
    """A JSON object from ``path``; one-line ``RecordError`` otherwise."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(one_line(f"cannot read {path}: {e}")) from e
    if not isinstance(obj, dict):
        raise RecordError(f"{path} is malformed: expected a JSON object")
    return obj


def read_config(run_dir) -> dict:
    """The ``config.json`` of a run folder as a dict; one-line ``RecordError`` otherwise."""
    if not Path(run_dir).is_dir():
        raise RecordError(f"run folder {run_dir} "
                          + ("is not a folder" if os.path.lexists(run_dir) else "does not exist"))
    if not (Path(run_dir) / CONFIG).is_file():
        raise RecordError(f"{run_dir} is not a jaxmlp run folder: it has no {CONFIG}")
    return read_json(Path(run_dir) / CONFIG)


def holds_a_run(run_dir) -> bool:
    """Whether ``run_dir`` holds any file a run writes."""
    return any(os.path.lexists(Path(run_dir) / name) for name in FILES)


def clear_run(run_dir) -> None:
    """Delete every file a run writes in ``run_dir`` and any writer's leftovers; anything
    else the user keeps there stays."""
    run_dir = Path(run_dir)
    for p in [run_dir / name for name in FILES] + list(run_dir.glob(".*.tmp*")):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()


@contextlib.contextmanager
def locked(run_dir):
    """Hold ``run_dir`` for one run: another process that tries meanwhile gets a one-line
    ``RecordError``. An advisory ``flock`` on the folder itself: nothing is left behind
    and the kernel lets go when the process ends, however it ends."""
    try:
        import fcntl
        fd = os.open(run_dir, os.O_RDONLY)
    except (ImportError, OSError):  # no fcntl (Windows): nothing to hold with
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecordError(f"{run_dir} is in use by another jaxmlp run; wait for it to end, "
                              f"or choose another folder") from None
        except OSError:  # a filesystem that does not lock folders
            pass
        yield
    finally:
        os.close(fd)


def make_folder(run_dir) -> bool:
    """Create ``run_dir`` if needed (one-line error if it cannot be); True if it was made."""
    made = not os.path.lexists(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise RecordError(one_line(f"cannot make the run folder {os.path.abspath(run_dir)}: "
                                   f"{e.strerror or e}; choose another with --out DIR")) from e
    if not os.access(run_dir, os.W_OK):
        raise RecordError(f"run folder {os.path.abspath(run_dir)} is not writable; "
                          f"choose another with --out DIR")
    return made


def default_run_dir(root, dataset: str) -> str:
    """``root/<UTC time>-<dataset>``, a name not taken yet (the folder is not made)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    names = (f"{stamp}-{dataset}" + (f"-{n}" if n else "") for n in range(1000))
    return os.fspath(next(Path(root) / n for n in names if not os.path.lexists(Path(root) / n)))


def point_latest(run_dir) -> None:
    """``<parent>/latest`` -> ``run_dir`` (relative, so the runs folder may move). A user's
    own 'latest' that is not a link is left alone; without symlinks, nothing happens."""
    link = Path(run_dir).parent / "latest"
    if os.path.lexists(link) and not link.is_symlink():
        return
    tmp = link.with_name(f".latest.tmp{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(Path(run_dir).name, tmp)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)


def environment() -> dict[str, Any]:
    """Versions and devices: what summary.json records about where a run ran."""
    import jax

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "platform": platform.platform(),
            **{d: version(d) for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                                       "tensorflow-datasets")},
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count()}
