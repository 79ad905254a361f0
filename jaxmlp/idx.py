"""Read and check the four MNIST-format IDX files of a manual dir (numpy and gzip only).

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian magic ``0x000008NN`` (08: uint8,
NN: the number of dims), NN big-endian uint32 sizes, then the data. MNIST, Fashion-MNIST
and KMNIST ship gzipped IDX files of 28x28 images and labels 0-9. Only the decompressed
content is checked, so gzip bytes that differ from TFDS's mirror (Debian's
``dataset-fashion-mnist``) are accepted. Every problem is an ``IdxError`` of one line
naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
"""The four file names TFDS's MNIST builders use, by role."""

SIDE, NUM_CLASSES = 28, 10


class IdxError(ValueError):
    """A manual-dir file is missing or invalid; the message is one line."""


def read_dir(manual_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": ...}``: images (N, 28, 28) uint8, labels (N,) int32.

    A missing file is reported before any file is decoded.
    """
    missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(manual_dir, f))]
    if missing:
        raise IdxError(f"manual dir {manual_dir} lacks {', '.join(missing)} (it needs all four "
                       f"MNIST-format IDX files)")
    splits = {}
    for split in ("train", "test"):
        images_path, labels_path = (os.path.join(manual_dir, FILES[f"{split}_{kind}"])
                                    for kind in ("images", "labels"))
        images, labels = _read(images_path, ndim=3), _read(labels_path, ndim=1)
        if images.shape[1:] != (SIDE, SIDE):
            raise IdxError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images; "
                           f"expected {SIDE}x{SIDE}")
        if len(images) != len(labels):
            raise IdxError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels; the counts must match")
        bad = np.flatnonzero(labels >= NUM_CLASSES)
        if bad.size:
            raise IdxError(f"{labels_path} has labels outside 0-{NUM_CLASSES - 1}: "
                           f"{labels[bad[0]]} at index {bad[0]} ({bad.size} such labels)")
        splits[split] = (images, labels.astype(np.int32))
    return splits


def _read(path: str, ndim: int) -> np.ndarray:
    """The uint8 array of ``ndim`` dims in the gzipped IDX file ``path``."""
    try:
        with open(path, "rb") as f:
            raw = gzip.decompress(f.read())
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise IdxError(f"{path} is not a readable gzip file (truncated or corrupt: {e})") from None
    magic, found = 0x0800 | ndim, int.from_bytes(raw[:4], "big")
    if found != magic:
        raise IdxError(f"{path} has IDX magic 0x{found:08x}; expected 0x{magic:08x} "
                       f"(uint8, {ndim} dims)")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(dims)):
        raise IdxError(f"{path} is truncated or padded: its header says {dims} but "
                       f"{len(raw) - header} bytes follow it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
