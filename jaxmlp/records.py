"""Run records: atomic writers, the environment, pre-flight.

Every file a run leaves is written through ``_atomic_write``: the bytes go to a
temporary file in the same directory, are flushed and fsync'ed, and only then
``os.replace`` puts them at the target name (an atomic rename on POSIX). A run
killed at any moment therefore leaves the previous file or the new one, never a
truncated one. A kill mid-write can leave a temporary file behind; its name
(``.NAME.PID.RANDOM.tmp``) says so, readers ignore it, and
``remove_stale_temp_files`` deletes those whose writer is gone. What a run
folder holds, and reading, clearing and creating one, is ``jaxmlp.runs``.

This module imports only the standard library and numpy, so plotting from saved
records never pays for jax or tensorflow. ``environment()`` imports jax lazily.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import math
import os
import platform
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

MIN_FREE_BYTES = 64 * 2**20
"""Free space ``check_writable`` asks for by default: a run's records and a few
checkpoints of the default model need a few MiB; 64 MiB leaves a wide margin."""

_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class RecordError(OSError):
    """A run directory cannot be written or read; the message is one line."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


# --- atomic writers ---------------------------------------------------------


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an atomic writer's temporary file (ignore it)."""
    return _TEMP_NAME.match(Path(path).name) is not None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable across a power loss; some filesystems
    # refuse fsync on directories, which is harmless for correctness.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp = _temp_path(path, os.getpid(), secrets.token_hex(4))
    # os.open with 0o666 honours the umask, unlike mkstemp's 0o600, so records
    # get the same permissions a plain open() would give them.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Any failure (including KeyboardInterrupt) leaves the old file untouched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _temp_path(path: Path, pid: int, token: str) -> Path:
    """Where process ``pid`` writes ``path`` before renaming it: hidden, beside it."""
    return path.with_name(f".{path.name}.{pid}.{token}.tmp")


def remove_partial_writes(path: str | os.PathLike, pid: int) -> None:
    """Delete the temp files a killed process ``pid`` may have left beside ``path``."""
    path = Path(path)
    pattern = _temp_path(path.with_name(glob.escape(path.name)), pid, "*").name
    for tmp in path.parent.glob(pattern):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def _jsonable(obj: Any) -> Any:
    """Plain JSON values for ``obj``; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2) atomically; returns the path.

    NaN and +-inf are written as ``null``: the file stays standard JSON that any
    reader parses (``json.dumps`` would otherwise write the non-standard ``NaN``).
    A ``null`` metric therefore means "not a finite number"; the run's record
    says separately where a loss first went non-finite. numpy scalars and arrays
    become numbers and lists, paths become strings.
    """
    text = json.dumps(_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Save ``arrays`` (name -> array-like) as an uncompressed ``.npz`` atomically.

    Object arrays are refused, so every record loads with ``allow_pickle=False``.
    """
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"array {name!r} has dtype object; records hold plain arrays only")
    # np.savez on a file object writes exactly there (no '.npz' appended to the name).
    return _atomic_write(path, lambda f: np.savez(f, **arrays))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files left in ``directory`` by writers that no longer run.

    Files of a live writer (another process, or this one) are kept, so this is
    safe to call while something else writes into the same directory.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_NAME.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


# --- environment and pre-flight ----------------------------------------------

_VERSIONED = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "flax": "flax",
    "optax": "optax",
    "orbax_checkpoint": "orbax-checkpoint",
    "tensorflow_datasets": "tensorflow-datasets",
    "numpy": "numpy",
}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and the accelerator this process runs on.

    Keys: jax, jaxlib, flax, optax, orbax_checkpoint, tensorflow_datasets, numpy
    (installed versions, ``None`` if absent), python, platform, backend
    (``jax.default_backend()``), device_kind, device_count. Versions come from
    package metadata, so tensorflow (behind tensorflow_datasets) is never imported;
    jax is imported here, and initialises its backend, if it was not already.
    """
    env: dict[str, Any] = {key: _version(dist) for key, dist in _VERSIONED.items()}
    env["python"] = platform.python_version()
    env["platform"] = platform.platform()
    import jax  # lazy: records are also read by the plotting path, which must stay light

    devices = jax.devices()
    env["backend"] = jax.default_backend()
    env["device_kind"] = devices[0].device_kind
    env["device_count"] = len(devices)
    return env


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def check_writable(out_dir: str | os.PathLike, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Fail before training if ``out_dir`` cannot hold the run's records.

    Creates the directory (and parents), writes and deletes a probe file, and
    checks ``shutil.disk_usage`` for ``min_free_bytes`` free. Returns the path;
    raises ``RecordError`` with a one-line message naming the problem. A probe
    write is the only honest test of writability: permission bits say nothing
    when running as root or on a read-only mount.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RecordError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecordError(one_line(f"cannot create output directory {out}: {e.strerror or e}")) from e
    probe = out / f".write-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"jaxmlp")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise RecordError(one_line(f"cannot write to output directory {out}: {e.strerror or e}")) from e
    free = shutil.disk_usage(out).free
    if free < min_free_bytes:
        raise RecordError(
            f"not enough free space for output directory {out}: "
            f"{_size(free)} free, need at least {_size(min_free_bytes)}"
        )
    return out
