"""The warm data cache: the decoded arrays of each split string, while their TFDS dataset stands.

``<data_dir>/jaxmlp_cache/<name>/<version>/<split>.npz``, one file per split
string (``train``, ``train[5000:]``, ...), holds ``images`` (N, 28, 28) uint8,
``labels`` (N,) int32 and ``token``: the identity of the prepared TFDS dataset
``<data_dir>/<name>/<version>`` they were decoded from. An entry counts only
while that dataset is still there unchanged. ``jaxmlp.data.load`` reads it
first and fills it after decoding; files are written with
``records.atomic_save_npz``. Imports neither TFDS nor TensorFlow, and a note
per TFDS release (``tfds-<release>.version``) keeps each dataset's version, so
a warm load needs neither.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import urllib.parse
import warnings

import numpy as np

from jaxmlp import idx, records

CACHE_DIR = "jaxmlp_cache"


def dataset_token(data_dir: str, name: str, version: str) -> str | None:
    """Identity of the prepared TFDS dataset, or None if it is not there.

    Names, sizes and modification times of its files: cheap, changed by any rebuild
    (content alone is not enough: two builds of random images have identical
    metadata), and kept by copies that preserve times (cp -p, rsync -a).
    """
    folder = os.path.join(data_dir, name, version)
    try:
        if not os.path.isfile(os.path.join(folder, "dataset_info.json")):
            return None
        h = hashlib.sha256()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    except OSError:
        return None


def entry_path(data_dir: str, name: str, version: str, split: str) -> str:
    # One file per split string, so "train" and "train[5000:]" never share an entry;
    # quoted because split strings hold "[", ":" and "%" ("train" stays train.npz).
    fname = urllib.parse.quote(split, safe="") + ".npz"
    return os.path.join(data_dir, CACHE_DIR, name, version, fname)


def default_data_dir() -> str:
    """TFDS's default data dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, read
    without importing TFDS (once imported, TFDS's own constant)."""
    tfds = sys.modules.get("tensorflow_datasets")
    if tfds is not None:
        return tfds.core.constants.DATA_DIR
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _version_note(data_dir: str, name: str) -> str:
    # Per installed TFDS release: a new release may bring a new dataset version, so its
    # first load asks TFDS again.
    release = importlib.metadata.version("tensorflow-datasets")
    return os.path.join(data_dir, CACHE_DIR, name, f"tfds-{release}.version")


def noted_version(data_dir: str, name: str) -> str | None:
    """The version of ``name`` noted for the installed TFDS by ``note_version``, or None."""
    try:
        with open(_version_note(data_dir, name), encoding="utf-8") as f:
            version = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    ok = version and all(p.isdigit() for p in version.split("."))
    return version if ok else None  # never a path outside the cache


def note_version(data_dir: str, name: str, version: str) -> None:
    """Remember ``name``'s TFDS version for the installed TFDS (best effort), so warm
    loads need not import TFDS to learn it."""
    try:
        path = _version_note(data_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        records.atomic_write_bytes(path, version.encode())
    except OSError:
        pass  # e.g. a read-only data dir: loads just stay on the slower path


def read_warm(data_dir: str, name: str, splits) -> tuple[str, dict] | None:
    """(version, {split: (images, labels)}) when the note and every split's entry are there
    and current, else None; needs neither TFDS nor TensorFlow."""
    version = noted_version(data_dir, name)
    cached = read(data_dir, name, version, splits) if version else {}
    return (version, cached) if len(cached) == len(splits) else None


def read(data_dir: str, name: str, version: str, splits) -> dict:
    """{split: (images, labels)} for each of ``splits`` the cache holds intact and current."""
    token = dataset_token(data_dir, name, version)
    if token is None:
        return {}
    out = {}
    for split in splits:
        try:
            with np.load(entry_path(data_dir, name, version, split), allow_pickle=False) as z:
                images, labels, entry_token = z["images"], z["labels"], str(z["token"])
        except Exception:  # missing, truncated or foreign file: treat as a miss and rebuild
            continue
        ok = (entry_token == token and images.dtype == np.uint8 and labels.dtype == np.int32
              and images.ndim == 3 and images.shape[1:] == (idx.SIDE, idx.SIDE)
              and labels.shape == images.shape[:1])
        if ok:
            out[split] = (images, labels)
    return out


def store(ds, data_dir: str, skip=()):
    """Write the splits of ``ds`` (a ``jaxmlp.data.Dataset``; but those in ``skip``, already
    cached) to the warm cache (best effort) and return it."""
    token = dataset_token(data_dir, ds.name, ds.version)
    try:
        for split, images, labels in ((ds.train_split, ds.train_images, ds.train_labels),
                                      (ds.test_split, ds.test_images, ds.test_labels)):
            if split in skip:
                continue
            path = entry_path(data_dir, ds.name, ds.version, split)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            records.atomic_save_npz(path, {"images": images, "labels": labels, "token": np.str_(token)})
        note_version(data_dir, ds.name, ds.version)
    except OSError as e:  # e.g. a shared read-only data dir: loading still works, only slower
        warnings.warn(f"jaxmlp: could not write the data cache under {data_dir} ({e}); "
                      f"the next load will decode through TFDS again", stacklevel=3)
    return ds
