"""The benchmark's data: random arrays for timing, learnable ones for accuracy, or an .npz.

Nothing here imports TensorFlow or TFDS, so the accelerator suite runs where
neither is installed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmlp import loop
from jaxmlp.data import Dataset

SPLIT_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def synthetic_data(seed: int = 0, num_train: int = 60_000, num_test: int = 10_000):
    """Random uint8 images and labels of MNIST's shape: (host arrays dict, ``loop.Data``).

    Random content is fine for timing: the work per step does not depend on it.
    """
    rng = np.random.default_rng(seed)
    host = {
        "train_images": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, num_train).astype(np.int32),
        "test_images": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, num_test).astype(np.int32),
    }
    return host, loop.Data(**{k: jnp.asarray(v) for k, v in host.items()})


def as_float32(data: loop.Data) -> loop.Data:
    """The same data pre-scaled to float32 in [0, 1] (4x the memory, no scaling in the step)."""
    scale = lambda x: (x.astype(jnp.float32) / 255.0) if x.dtype == jnp.uint8 else x
    return data._replace(train_images=scale(data.train_images), test_images=scale(data.test_images))


def learnable_dataset(seed: int = 0, num_train: int = 60_000, num_test: int = 10_000) -> Dataset:
    """A ``Dataset`` an MLP can learn, but not perfectly: each class lights a random 10% of
    the pixels with probability 0.3 against 0.12 elsewhere (a Bayes-optimal classifier
    scores about 0.95), so final accuracies spread across seeds as on real data."""
    rng = np.random.default_rng(seed)
    maps = np.where(rng.random((10, 28 * 28)) < 0.1, 0.3, 0.12).astype(np.float32)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = np.empty((n, 28 * 28), np.uint8)
        for i in range(0, n, 10_000):  # chunks bound the float temporaries
            chunk = maps[labels[i:i + 10_000]]
            lit = rng.random(chunk.shape, dtype=np.float32) < chunk
            images[i:i + 10_000] = lit * rng.integers(128, 256, lit.shape, dtype=np.uint8)
        return images.reshape(n, 28, 28), labels

    return Dataset(*split(num_train), *split(num_test), name="synthetic", version="1",
                   source=f"synthetic (seed {seed})")


def npz_dataset(path: str) -> Dataset:
    """A ``Dataset`` from an .npz with ``SPLIT_KEYS``: images uint8 (N, 28, 28), labels (N,)."""
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in SPLIT_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)} (needs {', '.join(SPLIT_KEYS)})")
        arrays = {k: f[k] for k in SPLIT_KEYS}
        name = str(f["name"]) if "name" in f else "npz"
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(labels) != len(images):
            raise ValueError(f"{path}: {split}_images must be uint8 (N, 28, 28) with N labels, "
                             f"got {images.dtype} {images.shape} and {len(labels)} labels")
        arrays[f"{split}_labels"] = labels.astype(np.int32)
    return Dataset(**arrays, name=name, version="npz", source=f"npz:{path}")
