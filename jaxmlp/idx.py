"""Read and validate the four MNIST-format IDX files (numpy and gzip only).

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic
``0x0000 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data.
MNIST, Fashion-MNIST and KMNIST all ship as gzip-compressed IDX files of
uint8 images (magic 0x00000803) and uint8 labels (magic 0x00000801).

Only the *decompressed* content is checked, so files whose gzip bytes differ
from the TFDS mirror's (Debian's ``dataset-fashion-mnist``) are accepted.
Every problem raises :class:`IdxError` with one line naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import NamedTuple

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
"""The four file names TFDS's MNIST builders use, by role."""

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims: (count, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8, 1 dim: (count,)
SIDE = 28
NUM_CLASSES = 10


class IdxError(ValueError):
    """A manual-dir file is missing or invalid; the message is one line."""


class Split(NamedTuple):
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int32 in [0, 10)


def read_dir(manual_dir: str) -> dict[str, Split]:
    """Read and validate the four files in ``manual_dir``.

    Returns ``{"train": Split, "test": Split}``; raises IdxError on the first
    problem found (a missing file is reported before any file is decoded).
    """
    if not os.path.isdir(manual_dir):
        raise IdxError(f"manual dir {manual_dir} does not exist or is not a folder")
    if not os.listdir(manual_dir):
        raise IdxError(f"manual dir {manual_dir} is empty; put the four files "
                       f"{', '.join(FILES.values())} in it")
    for fname in FILES.values():
        path = os.path.join(manual_dir, fname)
        if not os.path.isfile(path):
            hint = ""
            if os.path.isfile(path[: -len(".gz")]):
                hint = f" (found it uncompressed: run gzip {path[: -len('.gz')]})"
            raise IdxError(f"missing file {path}{hint}; the manual dir needs all of "
                           f"{', '.join(FILES.values())}")
    splits = {}
    for split in ("train", "test"):
        images_path = os.path.join(manual_dir, FILES[f"{split}_images"])
        labels_path = os.path.join(manual_dir, FILES[f"{split}_labels"])
        images = read_images(images_path)
        labels = read_labels(labels_path)
        if len(images) != len(labels):
            raise IdxError(f"{images_path} holds {len(images)} images but {labels_path} "
                           f"holds {len(labels)} labels; the counts must match")
        splits[split] = Split(images, labels)
    return splits


def read_images(path: str) -> np.ndarray:
    """(N, 28, 28) uint8 images from a gzipped IDX file."""
    dims, data = _read(path, IMAGES_MAGIC, "uint8 images, 3 dims")
    count, rows, cols = dims
    if (rows, cols) != (SIDE, SIDE):
        raise IdxError(f"{path} holds {rows}x{cols} images; expected {SIDE}x{SIDE}")
    return data.reshape(count, rows, cols)


def read_labels(path: str) -> np.ndarray:
    """(N,) int32 labels in [0, 10) from a gzipped IDX file."""
    _, data = _read(path, LABELS_MAGIC, "uint8 labels, 1 dim")
    bad = np.flatnonzero(data >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise IdxError(f"{path} has labels outside 0-{NUM_CLASSES - 1}: {int(data[i])} at "
                       f"index {i} ({bad.size} such labels in all)")
    return data.astype(np.int32)


def _read(path: str, magic: int, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Decompress ``path``, check its magic and size; return (dims, flat uint8 data)."""
    try:
        with open(path, "rb") as f:
            raw = gzip.decompress(f.read())
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise IdxError(f"{path} is not a readable gzip file (truncated or corrupt: {e})") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else "nothing"
        raise IdxError(f"{path} has IDX magic {found}; expected 0x{magic:08x} ({what})")
    if len(raw) < header:
        raise IdxError(f"{path} is truncated: its IDX header needs {header} bytes, "
                       f"the file decompresses to {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    if dims[0] == 0:
        raise IdxError(f"{path} holds no examples")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise IdxError(f"{path} is truncated or padded: its header says {dims} "
                       f"({expected} bytes) but it holds {len(raw) - header}")
    return dims, np.frombuffer(raw, np.uint8, expected, offset=header)
