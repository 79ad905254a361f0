"""Tests for jaxmlp.data and jaxmlp.idx: small files written here, never the network.

Every test runs with its proxies pointed at a closed port on localhost, so a probe that
escaped would be refused at once rather than reach a real host. The default tests need
neither TensorFlow nor a prepared dataset; those that prepare through TFDS are ``slow``.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import child_env

from jaxmlp import data, idx
from jaxmlp.config import DATASETS

N_TRAIN, N_TEST = 50, 20
FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "class_names", "name",
          "version", "source", "train_split", "test_split")


# --- helpers ---------------------------------------------------------------------------------

def write_idx(path, array, *, magic=None, compress=True):
    """``array`` (uint8) as an IDX file; ``magic`` overrides the right one."""
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw += array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def make_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8)}


def write_manual_dir(folder, arrays):
    os.makedirs(folder, exist_ok=True)
    for role, fname in idx.FILES.items():
        write_idx(os.path.join(folder, fname), arrays[role])
    return str(folder)


def sorted_rows(images, labels):
    """Examples sorted by pixels: TFDS stores them in its own (key-hash) order."""
    flat = np.asarray(images).reshape(len(images), -1)
    order = np.lexsort(flat.T[::-1])
    return flat[order], np.asarray(labels)[order]


def assert_nothing_left(data_dir):
    leftovers = os.listdir(data_dir) if os.path.exists(data_dir) else []
    assert leftovers == [], f"left behind in {data_dir}: {leftovers}"


def assert_one_line(error, *words):
    msg = str(error)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.fixture(autouse=True)
def closed_proxy(monkeypatch):
    """Proxies on a closed localhost port: a download probe is refused at once, offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    return port


@pytest.fixture
def good(tmp_path):
    arrays = make_arrays()
    return write_manual_dir(tmp_path / "manual", arrays), arrays


# --- Dataset from your own arrays ------------------------------------------------------------

def test_dataset_from_arrays_of_any_shape_takes_the_defaults():
    rng = np.random.default_rng(0)
    x, xt = rng.random((6, 32, 32, 3), np.float32), rng.integers(0, 256, (4, 32, 32, 3), np.uint8)
    y, yt = np.arange(6) % 3, np.arange(4) % 3
    ds = data.Dataset(x, y, xt, yt)
    assert data.Dataset._fields == FIELDS
    assert ds.train_images is x and ds.test_images is xt and ds.train_labels is y  # as given
    assert tuple(ds)[4:] == (None, "arrays", "", "arrays", "train", "test")
    assert data.Dataset(x, y, xt, yt, ("a", "b", "c")).class_names == ("a", "b", "c")


def test_unknown_dataset_lists_the_accepted_ones(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load("cifar10", data_dir=str(tmp_path / "data"))
    assert_one_line(e.value, "'cifar10'", *DATASETS)


# --- the IDX reader --------------------------------------------------------------------------

def test_idx_reader_returns_the_written_arrays(good):
    manual, arrays = good
    splits = idx.read_dir(manual)
    for split in ("train", "test"):
        images, labels = splits[split]
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])


def _drop(path):
    os.remove(path)


def _truncate_gzip(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def _not_gzip(path):
    write_idx(path, make_arrays()["test_images"], compress=False)


def _wrong_magic(path):
    write_idx(path, make_arrays()["train_labels"], magic=0x00000803)


def _not_28x28(path):
    write_idx(path, np.zeros((N_TRAIN, 32, 32), np.uint8))


def _fewer_labels(path):
    write_idx(path, np.zeros(N_TRAIN - 1, np.uint8))


def _label_12(path):
    labels = make_arrays()["test_labels"].copy()
    labels[3] = 12
    write_idx(path, labels)


def _payload(delta):
    def change(path):  # a valid gzip whose IDX header promises 100 bytes more (or fewer)
        images = make_arrays()["test_images"]
        raw = (0x803).to_bytes(4, "big") + b"".join(x.to_bytes(4, "big") for x in images.shape)
        body = images.tobytes()
        open(path, "wb").write(gzip.compress(raw + (body[:delta] if delta < 0 else body + bytes(delta))))
    return change


BAD_FILES = [  # (id, how to break the file, the file, words the message must hold)
    ("missing", _drop, "t10k-labels-idx1-ubyte.gz", ["lacks t10k-labels-idx1-ubyte.gz"]),
    ("truncated-gzip", _truncate_gzip, "train-images-idx3-ubyte.gz", ["not a readable gzip"]),
    ("not-gzip", _not_gzip, "t10k-images-idx3-ubyte.gz", ["not a readable gzip"]),
    ("wrong-magic", _wrong_magic, "train-labels-idx1-ubyte.gz", ["0x00000803", "expected 0x00000801"]),
    ("32x32", _not_28x28, "train-images-idx3-ubyte.gz", ["32x32", "expected 28x28"]),
    ("count-mismatch", _fewer_labels, "train-labels-idx1-ubyte.gz",
     [f"{N_TRAIN} images", f"{N_TRAIN - 1} labels"]),
    ("label-12", _label_12, "t10k-labels-idx1-ubyte.gz", ["outside 0-9", "12 at index 3"]),
    ("short-payload", _payload(-100), "t10k-images-idx3-ubyte.gz", ["truncated or padded"]),
    ("long-payload", _payload(100), "t10k-images-idx3-ubyte.gz", ["truncated or padded"]),
]


@pytest.mark.parametrize("break_it, fname, words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_idx_file_is_one_line_naming_it_and_leaves_nothing(good, tmp_path, break_it, fname, words):
    manual, _ = good
    break_it(os.path.join(manual, fname))
    data_dir = str(tmp_path / "data")
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual)
    assert_one_line(e.value, "bad --manual-dir", fname, *words)
    assert_nothing_left(data_dir)


# --- split strings ---------------------------------------------------------------------------

BAD_SPLITS = [("train[abc]", "Unrecognized split format"), ("validation", "Unknown split 'validation'"),
              ("train[5:3]", "it selects no examples"), ("train[:10%", "Unrecognized split format"),
              ("", "Unrecognized split format")]


@pytest.mark.parametrize("role", ["train_split", "test_split"])
@pytest.mark.parametrize("split, why", BAD_SPLITS, ids=[b[0] or "empty" for b in BAD_SPLITS])
def test_bad_split_string_is_one_line_before_any_work(good, tmp_path, role, split, why):
    data_dir = str(tmp_path / "data")
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=good[0], **{role: split})
    assert_one_line(e.value, f"bad {role} {split!r}: {why}", "'train[5000:]'")
    assert_nothing_left(data_dir)


def test_split_bounds_are_checked_against_the_prepared_sizes():
    import tensorflow_datasets as tfds

    sizes = {"train": N_TRAIN, "test": N_TEST}
    data._check_split(tfds, "train_split", "train[10:]+test[:50%]", sizes)  # fine: no error
    with pytest.raises(data.DataError) as e:
        data._check_split(tfds, "test_split", f"test[:{N_TEST + 1}]", sizes)
    assert_one_line(e.value, f"incompatible with {N_TEST} examples")
    with pytest.raises(data.DataError, match="selects no examples"):
        data._check_split(tfds, "test_split", f"test[{N_TEST}:]", sizes)


# --- offline ---------------------------------------------------------------------------------

FIXES = ["--data-dir", "--manual-dir", "apt-get install dataset-fashion-mnist",
         "--dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist"]


@pytest.mark.parametrize("name", DATASETS)
def test_offline_is_one_line_within_seconds_naming_the_fixes(name, tmp_path, closed_proxy):
    data_dir = str(tmp_path / "data")
    start = time.monotonic()
    with pytest.raises(data.DataError) as e:
        data.load(name, data_dir=data_dir)
    assert time.monotonic() - start < 5
    assert_one_line(e.value, name, data_dir, f"127.0.0.1:{closed_proxy} is unreachable", *FIXES)
    assert_nothing_left(data_dir)


def test_offline_host_that_never_answers_is_abandoned(tmp_path, monkeypatch):
    # DNS or a dropped SYN can hang past any socket timeout; the probe must not.
    def hang(*args, **kwargs):
        time.sleep(3)
        raise TimeoutError("never answered")  # the abandoned thread ends quietly

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(data, "PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(data.DataError, match="did not answer within 0.5 s"):
        data.load("kmnist", data_dir=str(tmp_path / "data"))
    assert time.monotonic() - start < 3


def test_probe_targets_the_download_host_or_its_proxy(monkeypatch):
    seen = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, timeout=None: seen.append(address) or socket.socket())
    for var in ("http_proxy", "https_proxy"):
        monkeypatch.delenv(var)
    assert data._probe("https://storage.googleapis.com/cvdf-datasets/mnist/") is None
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert data._probe("https://storage.googleapis.com/cvdf-datasets/mnist/") is None
    assert seen == [("storage.googleapis.com", 443), ("proxy.example", 3128)]


# --- without TensorFlow: the warm cache reads, preparing names the extra ---------------------

WITHOUT_TF = """
import json, os, sys

class NoTensorFlow:  # as if it were not installed (None in sys.modules would fool TFDS)
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
from jaxmlp import data

data_dir, fresh, manual = sys.argv[1:4]
ds = data.load("mnist", data_dir=data_dir, train_split="train[10:]")
out = {"warm": [ds.source, ds.class_names, ds.train_split, ds.train_images.tolist(),
                ds.train_labels.tolist(), ds.test_images.tolist(), ds.test_labels.tolist()]}
for route, kwargs in (("uncached", dict(data_dir=data_dir, train_split="train")),
                      ("manual", dict(data_dir=fresh, manual_dir=manual))):
    try:
        data.load("mnist", **kwargs)
    except data.DataError as e:
        out[route] = str(e)
out["tensorflow imported"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""


def test_without_tensorflow_the_cache_reads_and_preparing_names_the_extra(good, tmp_path):
    import tensorflow_datasets as tfds

    version = str(tfds.builder_cls("mnist").VERSION)
    folder = tmp_path / "data" / "mnist" / version
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")  # "prepared": an uncached split must decode
    names = tuple(f"class {i}" for i in range(10))
    rng = np.random.default_rng(3)
    entries = {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int32) % 10)
               for split, n in (("train[10:]", 40), ("test", 20))}
    for split, (images, labels) in entries.items():
        data._write_cache(str(folder), split, (images, labels, names))
    fresh = tmp_path / "fresh"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TF, str(tmp_path / "data"), str(fresh), good[0]],
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    source, class_names, split, *arrays = out["warm"]
    assert (source, tuple(class_names), split) == ("cache", names, "train[10:]")
    for got, want in zip(arrays, [*entries["train[10:]"], *entries["test"]]):
        np.testing.assert_array_equal(got, want)
    for route in ("uncached", "manual"):
        assert_one_line(out[route], "needs TensorFlow", "pip install 'jaxmlp[prepare]'",
                        "pip install -e '.[prepare]'")
    assert not out["tensorflow imported"]
    assert_nothing_left(fresh)


# --- through TFDS with TensorFlow (slow: run by .ci/run with -m slow) ------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data dir with mnist prepared from written IDX files, and those arrays."""
    root = tmp_path_factory.mktemp("prepared")
    arrays = make_arrays(seed=1)
    manual = write_manual_dir(root / "manual", arrays)
    ds = data.load("mnist", data_dir=str(root / "data"), manual_dir=manual, progress=False)
    return str(root / "data"), arrays, ds


@pytest.mark.slow
def test_prepared_from_idx_files_through_tfds_then_cached(prepared):
    import tensorflow_datasets as tfds

    data_dir, arrays, ds = prepared
    version = str(tfds.builder_cls("mnist").VERSION)
    assert (ds.source, ds.version, ds.class_names) == ("manual", version, tuple(str(i) for i in range(10)))
    for split in ("train", "test"):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28) and labels.dtype == np.int32
        want = sorted_rows(arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for got, expected in zip(sorted_rows(images, labels), want):
            np.testing.assert_array_equal(got, expected)
    # A regular TFDS dataset (TFDS finds it), its cache beside it, no staging folder left.
    assert tfds.builder("mnist", data_dir=data_dir).info.splits["train"].num_examples == N_TRAIN
    assert os.listdir(data_dir) == ["mnist"]
    assert {"jaxmlp-train.npz", "jaxmlp-test.npz"} <= set(os.listdir(os.path.join(data_dir, "mnist", version)))
    again = data.load("mnist", data_dir=data_dir, manual_dir="/nonexistent")  # not read once prepared
    assert (again.source, again.class_names) == ("cache", ds.class_names)
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    # A new split string is a TFDS slice in TFDS's order, decoded once, then cached by its string.
    for source in ("tfds", "cache"):
        part = data.load("mnist", data_dir=data_dir, train_split="train[10:]")
        assert (part.source, part.train_split) == (source, "train[10:]")
        np.testing.assert_array_equal(part.train_images, ds.train_images[10:])
        np.testing.assert_array_equal(part.train_labels, ds.train_labels[10:])
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, test_split=f"test[:{N_TEST + 1}]")
    assert_one_line(e.value, f"incompatible with {N_TEST} examples")


@pytest.mark.slow
def test_failure_while_tfds_prepares_leaves_nothing(good, tmp_path, monkeypatch):
    manual, arrays = good
    data_dir = str(tmp_path / "data")
    real = data._from_idx_files

    def dies_midway(base):
        class Dies(real(base), skip_registration=True):
            name = base.name

            def _generate_examples(self, images, labels):
                for i, example in enumerate(super()._generate_examples(images, labels)):
                    if i == 10:
                        raise OSError(28, "No space left on device (simulated)")
                    yield example
        return Dies

    monkeypatch.setattr(data, "_from_idx_files", dies_midway)
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual, progress=False)
    assert_one_line(e.value, "No space left on device", "nothing was kept")
    assert_nothing_left(data_dir)
    monkeypatch.undo()
    assert data.load("mnist", data_dir=data_dir, manual_dir=manual, progress=False).source == "manual"


@pytest.mark.slow
def test_mock_data_is_read_in_batches_and_never_cached(prepared, tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "data")
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load("fashion_mnist", data_dir=data_dir)
        over_cache = data.load("mnist", data_dir=prepared[0])  # the warm cache is not seen
        sliced = data.load("fashion_mnist", data_dir=data_dir, train_split="train[2:]")
    assert ds.source == "mock" and ds.class_names[0] == "T-shirt/top"
    assert ds.train_images.shape == (7, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (7,) and ds.test_labels.dtype == np.int32
    assert (over_cache.source, len(over_cache.train_labels)) == ("mock", 7)
    assert len(sliced.train_labels) == 7  # the mock ignores slices (docs/data.md says so)
    assert_nothing_left(data_dir)
