"""MNIST-family data as host numpy arrays: TFDS, local IDX files, a warm cache.

``load(name, data_dir=, manual_dir=, train_split=, test_split=)`` looks in
this order and stops at the first hit:

1. ``tfds.testing.mock_data`` is active: TFDS's fake examples (never cached).
2. The warm cache (``jaxmlp.data_cache``)
   ``<data_dir>/jaxmlp_cache/<name>/<version>/<split>.npz``, one file per
   split string (``train``, ``train[5000:]``, ...): decoded uint8 arrays.
   This path imports neither TFDS nor TensorFlow: the dataset version comes
   from a note the cold path leaves for the installed TFDS release, and a
   split string has an entry only once TFDS has read it. An entry counts
   only while the TFDS dataset it was decoded from is still in
   ``<data_dir>`` unchanged (names, sizes and mtimes of its files).
3. The TFDS dataset already prepared in ``<data_dir>/<name>/<version>``:
   each split string not cached yet is read through TFDS's own split API
   (``builder.as_dataset(split=...)``), decoded once through TensorFlow, then
   cached.
4. ``manual_dir``: the four IDX files are validated here (``jaxmlp.idx``),
   then prepared through TFDS, decoded and cached.
5. A download by TFDS, but only after a quick TCP probe of the builder's
   download host (or proxy); when it is unreachable, a ``DataError`` within
   seconds instead of TFDS's minutes of retries.

So ``manual_dir`` is read only while ``<name>`` is not prepared in
``data_dir``; to rebuild from other files use a fresh data dir or delete
``<data_dir>/<name>/<version>`` (its cache entry then stops counting).

Why subclass TFDS's own builders for step 4 (rather than a builder of our
own with one config per dataset): the subclass keeps the official name,
version, features and class names and only changes where the four files
come from (``dl_manager.manual_dir`` instead of a download). The result is
the same ``<data_dir>/<name>/<version>`` a download produces, with the same
example keys and so the same order, and ``tfds.load(name, data_dir=...)``
finds it later, with or without jaxmlp.

Split strings are TFDS's (https://www.tensorflow.org/datasets/splits):
``train[5000:]`` is ``train`` minus its first 5,000 examples *in TFDS's
order*, ``test[:10%]``, ``train+test``... jaxmlp never parses a slice itself:
TFDS checks the syntax and split names before any work starts, and the slice
bounds once the split sizes are known (after preparing).

Nothing half-built is ever left in ``data_dir``: TFDS prepares into a
private staging folder inside it, which is renamed into place only when
complete and deleted on any failure. Cache files are written to a temporary
name and ``os.replace``-d.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
import tempfile
import threading
import types
import urllib.parse
import urllib.request
from typing import NamedTuple

import numpy as np

from jaxmlp import data_cache, idx
from jaxmlp.config import DATASETS

PROBE_TIMEOUT_S = 4.0  # TCP connect to the download host; keeps the offline error well under 10 s
SPLITS = ("train", "test")  # the splits every dataset in DATASETS has
SPLIT_EXAMPLE = "'train[5000:]' (train minus its first 5000), 'test', 'train[:10%]'"
_STAGING_PREFIX = ".jaxmlp-prepare-"
_README_OFFLINE = 'README, section "Offline"'


class DataError(RuntimeError):
    """The data cannot be loaded; the message is one line: the problem and what to do."""


class Dataset(NamedTuple):
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) int32 in [0, 10)
    test_images: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray  # (M,) int32 in [0, 10)
    name: str  # one of DATASETS
    version: str  # TFDS dataset version, e.g. "3.0.1"
    source: str  # where the arrays came from: cache | tfds | manual | download | mock
    train_split: str = "train"  # the TFDS split strings the arrays hold
    test_split: str = "test"


def load(name: str = "mnist", *, data_dir: str | None = None, manual_dir: str | None = None,
         train_split: str = "train", test_split: str = "test", progress: bool = True) -> Dataset:
    """Load ``name`` (one of ``DATASETS``) as host numpy arrays.

    Args:
      name: TFDS dataset name.
      train_split, test_split: TFDS split strings, e.g. ``"train[5000:]"``
        (the original's 55,000 training images), ``"test"``, ``"test[:50%]"``.
      data_dir: TFDS data dir; None means TFDS's default (``$TFDS_DATA_DIR``
        or ``~/tensorflow_datasets``).
      manual_dir: folder with the four MNIST-format IDX ``.gz`` files, used to
        prepare ``name`` when it is not prepared in ``data_dir`` yet.
      progress: show TFDS's progress bars while preparing (False turns them off
        for the process).

    Raises:
      DataError: unknown name or split, bad manual files, unwritable data dir, offline.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    # TFDS's default when None (computed the same way whether or not TFDS is imported).
    data_dir = os.path.abspath(os.path.expanduser(data_dir or data_cache.default_data_dir()))
    warm = _from_warm_cache(name, data_dir, (train_split, test_split))
    if warm is not None:
        return warm
    import tensorflow_datasets as tfds  # ~0.5 s; does not import TensorFlow

    splits = (_check_split(tfds, "train_split", train_split),
              _check_split(tfds, "test_split", test_split))
    if not progress:
        tfds.disable_progress_bar()

    builder_cls = tfds.builder_cls(name)
    version = str(builder_cls.VERSION)

    if _tfds_is_mocked(tfds):
        # Fake data: TFDS ignores data_dir here, and nothing may reach a real cache.
        return _from_mock(name, version, data_dir, splits)
    cached = data_cache.read(data_dir, name, version, splits)
    if len(cached) == len(splits):
        data_cache.note_version(data_dir, name, version)  # warm next time
        return Dataset(*cached[splits[0]], *cached[splits[1]], name, version, "cache", *splits)
    if os.path.isfile(_info_path(data_dir, name, version)):
        return data_cache.store(_from_tfds(name, version, data_dir, splits, source="tfds",
                                           cached=cached), data_dir, skip=cached)
    if manual_dir is not None:
        manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
        try:  # validate the decompressed content before TFDS touches anything
            idx.read_dir(manual_dir)
        except idx.IdxError as e:
            raise DataError(f"bad --manual-dir for {name}: {e}; fix the files and run again "
                            f"(nothing was written to {data_dir})") from e
        _prepare(_manual_builder_cls(name), name, data_dir,
                 what=f"from the files in {manual_dir}", manual_dir=manual_dir)
        return data_cache.store(_from_tfds(name, version, data_dir, splits, source="manual"),
                                data_dir)
    url = getattr(builder_cls, "URL", None)
    if url:
        problem = _probe(url)
        if problem:
            raise DataError(_offline_message(name, version, data_dir, url, problem))
    _prepare(builder_cls, name, data_dir, what=f"by downloading it from {url or 'its source'}")
    return data_cache.store(_from_tfds(name, version, data_dir, splits, source="download"),
                            data_dir)


def _from_warm_cache(name: str, data_dir: str, splits: tuple) -> Dataset | None:
    """Both splits from the warm cache without importing TFDS (0.6 s of start-up here), or
    None: then the full path runs (it also says what is wrong with a bad split). An active
    ``tfds.testing.mock_data`` never sees real data."""
    tfds = sys.modules.get("tensorflow_datasets")
    if (tfds is not None and _tfds_is_mocked(tfds)) or not all(isinstance(s, str) and s.strip()
                                                               for s in splits):
        return None
    warm = data_cache.read_warm(data_dir, name, splits)
    if warm is None:
        return None
    version, cached = warm
    return Dataset(*cached[splits[0]], *cached[splits[1]], name, version, "cache", *splits)


# --- split strings -------------------------------------------------------------------------------

def _check_split(tfds, role: str, split) -> str:
    """``split`` if TFDS parses it and it names only splits the dataset has; else a DataError.

    Split sizes are unknown until the dataset is prepared, so here the names are
    resolved against unbounded sizes; ``_resolve`` checks the bounds later.
    """
    if not isinstance(split, str) or not split.strip():
        raise DataError(f"bad {role} {split!r}: give a TFDS split string, e.g. {SPLIT_EXAMPLE}")
    _resolve(tfds, role, split, dict.fromkeys(SPLITS, 2**62), sizes_known=False)
    return split


def _resolve(tfds, role: str, split: str, sizes: dict[str, int], *,
             sizes_known: bool = True) -> list[tuple[str, int, int]]:
    """TFDS's own reading of ``split`` given each split's size: [(split name, start, stop), ...]."""
    infos = {s: tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None)
             for s, n in sizes.items()}
    try:
        parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, NotImplementedError, KeyError) as e:
        # TFDS's parse errors repeat the format link over two lines; its last line is the point.
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip().rstrip(".")
        raise DataError(f"bad {role} {split!r}: {why}; use a TFDS split string over "
                        f"{'/'.join(SPLITS)}, e.g. {SPLIT_EXAMPLE}") from None
    ranges = [(p.splitname, *slice(p.from_, p.to).indices(sizes[p.splitname])[:2]) for p in parts]
    if sum(max(stop - start, 0) for _, start, stop in ranges) == 0:
        of = f" of {', '.join(f'{s} {n}' for s, n in sizes.items())}" if sizes_known else ""
        raise DataError(f"bad {role} {split!r}: it selects no examples{of}; e.g. {SPLIT_EXAMPLE}")
    return [(s, start, max(start, stop)) for s, start, stop in ranges]


# --- TFDS: preparing and decoding (the cold path; imports TensorFlow) ----------------------------

def _prepare(builder_cls, name: str, data_dir: str, *, what: str, manual_dir: str | None = None):
    """Prepare ``name`` in a staging folder inside ``data_dir``; rename it in only when complete."""
    try:
        os.makedirs(data_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=data_dir)
    except OSError as e:
        raise DataError(f"data dir {data_dir} cannot be written ({e.strerror or e}); "
                        f"pass --data-dir with a writable folder") from e
    try:
        tfds = _import_tfds_with_tf()
        builder = builder_cls(data_dir=staging)
        # TFDS prints the folder it writes to, which here is the staging folder; stay quiet
        # rather than name a path that is about to disappear (its progress bars remain).
        builder._log_download_bytes = builder._log_download_done = lambda: None
        # try_download_gcs=False: fetch only from the builder's host, the one we probed.
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        builder.download_and_prepare(download_dir=os.path.join(staging, "downloads"),
                                     download_config=config)
        final = os.path.join(data_dir, name, str(builder.version))
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.rename(os.fspath(builder.data_path), final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "dataset_info.json")):
                raise
            # Another process finished the same dataset first: keep theirs.
    except Exception as e:
        _rmdir_if_empty(os.path.join(data_dir, name))
        first_line = (str(e).strip().splitlines() or [""])[0]
        hint = "" if manual_dir else f"; for other ways to get the data see the {_README_OFFLINE}"
        raise DataError(f"preparing {name} {what} failed: {type(e).__name__}: {first_line} "
                        f"(nothing was kept in {data_dir}){hint}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # not empty (another version is prepared there) or not there
        pass


def _from_tfds(name: str, version: str, data_dir: str, splits: tuple[str, str], *, source: str,
               cached: dict | None = None) -> Dataset:
    """Both splits of a prepared TFDS dataset as numpy arrays; ``cached`` ones are reused."""
    tfds = _import_tfds_with_tf()
    builder = tfds.builder(name, data_dir=data_dir)
    sizes = {s: builder.info.splits[s].num_examples for s in SPLITS}
    arrays = []
    for role, split in zip(("train_split", "test_split"), splits):
        if cached and split in cached:
            arrays += cached[split]
            continue
        want = sum(stop - start for _, start, stop in _resolve(tfds, role, split, sizes))
        images, labels = _decode(tfds, builder, split)
        if len(labels) != want:  # TFDS read something other than it said it would
            raise DataError(f"{role} {split!r} of {name} gave {len(labels)} examples, expected "
                            f"{want}; delete {builder.data_dir} and prepare it again")
        arrays += [images, labels]
    return Dataset(*arrays, name, version, source, *splits)


def _decode(tfds, builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int32) of ``split``, in TFDS's order."""
    # Iterate in batches: batch_size=-1 aborts the process under tfds.testing.mock_data.
    images, labels = [], []
    ds = builder.as_dataset(split=split, batch_size=1000, shuffle_files=False)
    for batch in tfds.as_numpy(ds):
        images.append(batch["image"])
        labels.append(batch["label"])
    images = np.concatenate(images).reshape(-1, idx.SIDE, idx.SIDE).astype(np.uint8)
    return images, np.concatenate(labels).astype(np.int32)


def _from_mock(name: str, version: str, data_dir: str, splits: tuple[str, str]) -> Dataset:
    """Both splits from ``tfds.testing.mock_data``.

    The mock ignores slices (every split string gives all ``num_examples`` fake
    examples), so the whole fake splits are read and TFDS's own reading of each
    split string (``_resolve``) is applied to them, as a prepared dataset would be.
    """
    tfds = _import_tfds_with_tf()
    builder = tfds.builder(name, data_dir=data_dir)
    whole = {s: _decode(tfds, builder, s) for s in SPLITS}
    sizes = {s: len(labels) for s, (_, labels) in whole.items()}
    arrays = []
    for role, split in zip(("train_split", "test_split"), splits):
        ranges = _resolve(tfds, role, split, sizes)
        for k in range(2):  # images, then labels
            arrays.append(np.concatenate([whole[s][k][start:stop] for s, start, stop in ranges]))
    return Dataset(*arrays, name, version, "mock", *splits)


def _import_tfds_with_tf():
    """Import TensorFlow for TFDS, hiding every GPU from it so it never takes accelerator memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    # TF only decodes PNGs here (exact integers), so its oneDNN kernels buy nothing; turning
    # them off also silences the notice TF prints about them on import.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised elsewhere first; too late to hide them
        pass
    return tfds


def _tfds_is_mocked(tfds) -> bool:
    # tfds.testing.mock_data swaps DatasetBuilder's methods for functions defined in
    # tensorflow_datasets.testing; the real ones live in tensorflow_datasets.core.
    fn = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(fn, "__module__", "").startswith("tensorflow_datasets.testing")


@functools.lru_cache(maxsize=None)
def _manual_builder_cls(name: str):
    """TFDS's own builder for ``name``, reading the four IDX files from its manual_dir."""
    import tensorflow_datasets as tfds

    base = tfds.builder_cls(name)

    class FromIdxFiles:
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            f"Put the four MNIST-format files {', '.join(idx.FILES.values())} in manual_dir.")

        def _split_generators(self, dl_manager):
            splits = idx.read_dir(os.fspath(dl_manager.manual_dir))
            return {s: self._generate_examples(*splits[s]) for s in SPLITS}

        def _generate_examples(self, images, labels):
            # Keys are file positions, as in TFDS's MNIST builder, so the order matches a download.
            for i in range(len(images)):
                yield i, {"image": images[i][..., None], "label": int(labels[i])}

    def body(ns):
        ns.update(name=base.name, __module__=__name__, __doc__=f"{base.name} from local IDX files.")

    # skip_registration: the official builder keeps the name in TFDS's registry.
    return types.new_class(f"{base.__name__}FromIdxFiles", (FromIdxFiles, base),
                           {"skip_registration": True}, body)


# --- the prepared TFDS dataset (the warm cache is jaxmlp.data_cache) -----------------------------

def _info_path(data_dir: str, name: str, version: str) -> str:
    return os.path.join(data_dir, name, version, "dataset_info.json")


# --- offline fail-fast ---------------------------------------------------------------------------

def _probe(url: str, timeout: float | None = None) -> str | None:
    """None if a TCP connection to ``url``'s host (or its proxy) opens in time, else why not.

    DNS lookups can hang longer than any socket timeout, so the attempt runs in a
    daemon thread and is abandoned after ``timeout`` seconds.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname, p.port or 80
    target = f"{host}:{port}" + (" (proxy)" if proxy and parts.hostname != host else "")
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


def _offline_message(name: str, version: str, data_dir: str, url: str, problem: str) -> str:
    files = ", ".join(idx.FILES.values())
    return (f"cannot get {name} {version}: it is not prepared in {data_dir}, no --manual-dir was "
            f"given, and its download host {problem} (tried {url}). Ways forward: "
            f"(1) --data-dir DIR where {name} is already prepared; "
            f"(2) --manual-dir DIR with the four files {files}; "
            f"(3) apt-get install dataset-fashion-mnist, then "
            f"--dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist. "
            f"See the {_README_OFFLINE}.")
