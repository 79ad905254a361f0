"""MNIST-family data as host numpy arrays, through TensorFlow Datasets, with a warm cache.

``load(name, ...)`` returns a ``Dataset`` from the first source that applies:
``tfds.testing.mock_data``; the warm cache (``<data_dir>/<name>/<version>/jaxmlp-<split>.npz``,
read without TensorFlow); the TFDS dataset prepared in ``data_dir``; the four IDX files of
``manual_dir``, prepared by TFDS's own builder; a download, once a quick probe of its host
answers (offline: a one-line ``DataError`` within seconds). All but the first two need
TensorFlow (the ``prepare`` extra). Nothing half-built is left in ``data_dir``. docs/data.md
says more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
import warnings
from typing import NamedTuple

import numpy as np

from jaxmlp import idx, records
from jaxmlp.config import DATASETS

PROBE_TIMEOUT_S = 4.0  # TCP connect to the download host: the offline error comes within seconds
SPLITS = ("train", "test")  # the splits every dataset in DATASETS has
SPLIT_EXAMPLE = "e.g. 'train[5000:]' (train minus its first 5000), 'test', 'test[:10%]'"
PREPARE_EXTRA = "pip install 'jaxmlp[prepare]' (in a checkout: pip install -e '.[prepare]')"


class DataError(RuntimeError):
    """The data cannot be loaded; the message is one line: the problem and what to do."""


class Dataset(NamedTuple):
    """Train and test arrays: images (N, ...) uint8 or float of any shape, labels (N,) int.

    Only the arrays are required: ``Dataset(x_train, y_train, x_test, y_test)``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] | None = None  # label i is class_names[i]
    name: str = "arrays"
    version: str = ""  # the TFDS dataset version, e.g. "3.0.1"
    source: str = "arrays"  # from TFDS: cache | tfds | manual | download | mock
    train_split: str = "train"  # the TFDS split strings the arrays hold
    test_split: str = "test"


def load(name: str = "mnist", *, data_dir: str | None = None, manual_dir: str | None = None,
         train_split: str = "train", test_split: str = "test", progress: bool = True) -> Dataset:
    """``name`` (one of ``DATASETS``) as uint8 images (N, 28, 28) and int32 labels (N,).

    Args:
      name: TFDS dataset name.
      data_dir: TFDS data dir; None means TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      manual_dir: folder with the four MNIST-format IDX ``.gz`` files (``idx.FILES``), used
        to prepare ``name`` when it is not prepared in ``data_dir`` yet.
      train_split, test_split: TFDS split strings, e.g. ``"train[5000:]"``, ``"test[:50%]"``.
      progress: TFDS's progress bars while preparing (False turns them off for the process).

    Raises:
      DataError: unknown name or split, bad manual files, no TensorFlow to prepare, offline.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    import tensorflow_datasets as tfds  # ~0.8 s; imports no TensorFlow

    roles = {"train_split": train_split, "test_split": test_split}
    for role, split in roles.items():
        _check_split(tfds, role, split)
    if not progress:
        tfds.disable_progress_bar()
    builder_cls = tfds.builder_cls(name)
    version = str(builder_cls.VERSION)
    data_dir = os.path.abspath(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR))
    about = dict(name=name, version=version, train_split=train_split, test_split=test_split)
    if _is_mocked(tfds):  # TFDS ignores data_dir here, and fake data must reach no cache
        builder = _tfds_with_tf(name).builder(name, data_dir=data_dir)
        arrays = [a for split in roles.values() for a in _decode(builder, split)]
        return Dataset(*arrays, _class_names(builder), source="mock", **about)

    folder = os.path.join(data_dir, name, version)
    cached = {split: _read_cache(folder, split) for split in roles.values()}
    if all(cached.values()):
        (x, y, class_names), (xt, yt, _) = cached[train_split], cached[test_split]
        return Dataset(x, y, xt, yt, class_names, source="cache", **about)
    source = "tfds"
    if not os.path.isfile(os.path.join(folder, "dataset_info.json")):
        if manual_dir is not None:
            manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
            try:  # the content is checked before TFDS (or TensorFlow) is involved
                idx.read_dir(manual_dir)
            except idx.IdxError as e:
                raise DataError(f"bad --manual-dir for {name}: {e}; fix the files and run "
                                f"again") from None
            _prepare(_from_idx_files(builder_cls), name, data_dir, manual_dir)
            source = "manual"
        else:
            problem = _probe(builder_cls.URL)
            if problem:
                raise DataError(_offline_message(name, data_dir, builder_cls.URL, problem))
            _prepare(builder_cls, name, data_dir, None)
            source = "download"

    builder = _tfds_with_tf(name).builder(name, data_dir=data_dir)
    sizes = {s: builder.info.splits[s].num_examples for s in SPLITS}
    class_names = _class_names(builder)
    for role, split in roles.items():
        if not cached[split]:
            _check_split(tfds, role, split, sizes)  # the slice bounds, now that sizes are known
            cached[split] = (*_decode(builder, split), class_names)
            _write_cache(folder, split, cached[split])
    (x, y, _), (xt, yt, _) = cached[train_split], cached[test_split]
    return Dataset(x, y, xt, yt, class_names, source=source, **about)


def _check_split(tfds, role: str, split, sizes: dict[str, int] | None = None) -> None:
    """A one-line DataError unless TFDS reads ``split`` as some examples of ``SPLITS``.

    Before preparing, the split sizes are unknown (unbounded here): only the syntax, the
    names and empty slices are checked; with ``sizes``, the bounds too.
    """
    sizes = sizes or dict.fromkeys(SPLITS, 2**62)
    infos = {s: tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None)
             for s, n in sizes.items()}
    try:
        parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
        count = sum(len(range(*slice(p.from_, p.to).indices(sizes[p.splitname]))) for p in parts)
        why = "" if count else "it selects no examples"
    except ValueError as e:  # TFDS's parse errors repeat a link over two lines; the last says it
        why = (str(e).strip().splitlines() or ["unreadable"])[-1].rstrip(".")
    if why:
        raise DataError(f"bad {role} {split!r}: {why}; give a TFDS split string over "
                        f"{'/'.join(SPLITS)}, {SPLIT_EXAMPLE}")


# --- the warm cache ------------------------------------------------------------------------------

def _cache_path(folder: str, split: str) -> str:
    # One file per split string; quoted, as "[", ":" and "%" are poor file-name characters.
    return os.path.join(folder, f"jaxmlp-{urllib.parse.quote(split, safe='')}.npz")


def _read_cache(folder: str, split: str) -> tuple | None:
    """(images, labels, class_names) cached for ``split``, or None."""
    try:
        with np.load(_cache_path(folder, split)) as z:
            return z["images"], z["labels"], tuple(z["class_names"].tolist()) or None
    except Exception:  # missing, or not an entry of ours: decoded again and rewritten
        return None


def _write_cache(folder: str, split: str, entry: tuple) -> None:
    images, labels, class_names = entry
    try:
        records.atomic_save_npz(_cache_path(folder, split), {
            "images": images, "labels": labels, "class_names": np.array(class_names or (), str)})
    except OSError as e:  # e.g. a shared read-only data dir: loads still work, only slower
        warnings.warn(f"jaxmlp: cannot cache {split!r} in {folder} ({e}); the next load will "
                      f"decode it again", stacklevel=3)


# --- TFDS with TensorFlow: preparing and decoding -------------------------------------------------

def _tfds_with_tf(name: str):
    """TFDS with TensorFlow imported and kept off every GPU, or a DataError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # it only decodes PNGs; also quiets a notice
    try:
        import tensorflow as tf
        import importlib_resources  # noqa: F401  (TFDS's builders need it to prepare)
    except ImportError as e:
        raise DataError(f"{name} is not in the warm cache, and preparing or decoding it through "
                        f"TFDS needs TensorFlow ({e}): {PREPARE_EXTRA}") from None
    import tensorflow_datasets as tfds

    with contextlib.suppress(RuntimeError):  # TF already initialised elsewhere: too late to hide
        tf.config.set_visible_devices([], "GPU")
    return tfds


def _prepare(builder_cls, name: str, data_dir: str, manual_dir: str | None) -> None:
    """Prepare ``name`` in a staging folder inside ``data_dir``; rename it in only when complete."""
    tfds = _tfds_with_tf(name)
    try:
        os.makedirs(data_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".jaxmlp-prepare-", dir=data_dir)
    except OSError as e:
        raise DataError(f"data dir {data_dir} cannot be written ({e.strerror or e}); pass "
                        f"--data-dir with a writable folder") from None
    final = os.path.join(data_dir, name, str(builder_cls.VERSION))
    try:
        builder = builder_cls(data_dir=staging)
        # try_download_gcs=False: fetch only from the builder's own host, the one probed.
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        builder.download_and_prepare(download_dir=os.path.join(staging, "downloads"),
                                     download_config=config)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(builder.data_dir, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "dataset_info.json")):
                raise  # else another process prepared it first: keep theirs
    except Exception as e:
        with contextlib.suppress(OSError):  # the dataset's folder, if this made it and it is empty
            os.rmdir(os.path.dirname(final))
        how = f"from the files in {manual_dir}" if manual_dir else f"by download ({builder_cls.URL})"
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"preparing {name} {how} failed: {type(e).__name__}: {first} (nothing "
                        f"was kept in {data_dir})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_idx_files(base):
    """TFDS's builder ``base``, reading the four IDX files of its manual_dir instead of a download."""

    class FromIdxFiles(base, skip_registration=True):  # TFDS's registry keeps the official one
        name = base.name
        MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put the four files {', '.join(idx.FILES.values())} here."

        def _split_generators(self, dl_manager):
            splits = idx.read_dir(os.fspath(dl_manager.manual_dir))
            return {s: self._generate_examples(*splits[s]) for s in SPLITS}

        def _generate_examples(self, images, labels):
            # Keys are file positions, as in TFDS's MNIST builder, so the order is a download's.
            for i in range(len(images)):
                yield i, {"image": images[i][..., None], "label": int(labels[i])}

    return FromIdxFiles


def _decode(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int32) of ``split``, in TFDS's order."""
    import tensorflow_datasets as tfds

    # In batches: batch_size=-1 aborts the process under tfds.testing.mock_data.
    ds = builder.as_dataset(split=split, batch_size=1000, shuffle_files=False)
    batches = list(tfds.as_numpy(ds))
    images = np.concatenate([b["image"] for b in batches])[..., 0]  # (N, 28, 28, 1): grey
    return images.astype(np.uint8), np.concatenate([b["label"] for b in batches]).astype(np.int32)


def _class_names(builder) -> tuple[str, ...]:
    return tuple(builder.info.features["label"].names)


def _is_mocked(tfds) -> bool:
    # tfds.testing.mock_data swaps DatasetBuilder's methods for functions defined in
    # tensorflow_datasets.testing; the real ones live in tensorflow_datasets.core.
    fn = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(fn, "__module__", "").startswith("tensorflow_datasets.testing")


# --- offline fail-fast ---------------------------------------------------------------------------

def _probe(url: str, timeout: float | None = None) -> str | None:
    """None if a TCP connection to ``url``'s host (or its proxy) opens in time, else why not.

    DNS lookups can hang past any socket timeout, so the attempt runs in a daemon thread
    that is abandoned after ``timeout`` seconds.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    target = f"{host}:{port}"
    if proxy and not urllib.request.proxy_bypass(host):  # TFDS downloads through it too
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname, p.port or 80
        target = f"its proxy {host}:{port}"
    errors: list[str] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            errors.append(str(e) or type(e).__name__)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"{target} did not answer within {timeout:g} s"
    return f"{target} is unreachable ({errors[0]})" if errors else None


def _offline_message(name: str, data_dir: str, url: str, problem: str) -> str:
    return (f"cannot get {name}: it is not prepared in {data_dir}, no --manual-dir was given, and "
            f"its download ({url}) cannot start: {problem}. Either pass --data-dir DIR where "
            f"{name} is prepared, or --manual-dir DIR holding the four IDX files "
            f"{', '.join(idx.FILES.values())}, or "
            f"apt-get install dataset-fashion-mnist and use --dataset fashion_mnist --manual-dir "
            f"/usr/share/datasets/fashion-mnist (see docs/data.md)")
