"""Tests for jaxmlp.data and jaxmlp.idx: offline, small files written here, no network.

Every IDX file is written by these tests (50 train / 20 test random images), so
nothing depends on a download or on the Debian package.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxmlp import data, idx
from jaxmlp.config import DATASETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_TEST = 50, 20


# --- helpers ---------------------------------------------------------------------------------

def write_idx(path, array, *, magic=None, compress=True):
    """Write ``array`` (uint8) as an IDX file; ``magic`` overrides the correct one."""
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw += array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def make_arrays(seed=0, n_train=N_TRAIN, n_test=N_TEST):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_manual_dir(folder, arrays):
    os.makedirs(folder, exist_ok=True)
    for role, fname in idx.FILES.items():
        write_idx(os.path.join(folder, fname), arrays[role])
    return str(folder)


def canonical(images, labels):
    """Rows sorted by pixel content: TFDS stores examples in its own (key-hash) order."""
    flat = np.asarray(images).reshape(len(images), -1)
    order = np.lexsort(flat.T[::-1])
    return flat[order], np.asarray(labels)[order]


def assert_same_examples(images, labels, want_images, want_labels):
    got, want = canonical(images, labels), canonical(want_images, want_labels)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def assert_nothing_left(data_dir):
    """No dataset, cache or staging folder: the data dir is absent or empty."""
    leftovers = os.listdir(data_dir) if os.path.exists(data_dir) else []
    assert leftovers == [], f"left behind in {data_dir}: {leftovers}"


def run_python(code):
    """Run ``code`` in a fresh interpreter that imports this checkout of jaxmlp."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture
def good(tmp_path):
    arrays = make_arrays()
    return write_manual_dir(tmp_path / "manual", arrays), arrays


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data dir with mnist prepared from written files (once per module), and the arrays."""
    root = tmp_path_factory.mktemp("prepared")
    arrays = make_arrays(seed=1)
    manual = write_manual_dir(root / "manual", arrays)
    ds = data.load("mnist", data_dir=str(root / "data"), manual_dir=manual)
    assert ds.source == "manual"
    return str(root / "data"), arrays, ds


@pytest.fixture
def no_network(monkeypatch):
    """Every TCP connection is refused, as on a machine without network."""
    def refuse(address, *args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused (simulated by the test)")
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- names -----------------------------------------------------------------------------------

def test_unknown_dataset_lists_the_accepted_ones(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load("cifar10", data_dir=str(tmp_path / "data"))
    msg = str(e.value)
    assert "\n" not in msg and "'cifar10'" in msg
    assert all(name in msg for name in DATASETS)
    assert_nothing_left(tmp_path / "data")


# --- bad manual files ------------------------------------------------------------------------

def _drop(d, fname):
    os.remove(os.path.join(d, fname))


def _truncate_gzip(d, fname):
    path = os.path.join(d, fname)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def _corrupt_gzip(d, fname):
    path = os.path.join(d, fname)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2: len(raw) // 2 + 16] = bytes(16)  # scribble over the deflate stream
    open(path, "wb").write(bytes(raw))


def _not_gzip(d, fname):
    write_idx(os.path.join(d, fname), make_arrays()["train_images"], compress=False)


def _wrong_magic(d, fname):
    write_idx(os.path.join(d, fname), make_arrays()["train_labels"], magic=0x00000803)


def _not_28x28(d, fname):
    write_idx(os.path.join(d, fname), np.zeros((N_TRAIN, 32, 32), np.uint8))


def _fewer_labels(d, fname):
    write_idx(os.path.join(d, fname), np.zeros(N_TRAIN - 1, np.uint8))


def _label_out_of_range(d, fname):
    labels = make_arrays()["test_labels"].copy()
    labels[3] = 12
    write_idx(os.path.join(d, fname), labels)


def _short_payload(d, fname):
    # A valid gzip whose IDX header promises more images than follow.
    images = make_arrays()["test_images"]
    raw = (0x803).to_bytes(4, "big") + b"".join(x.to_bytes(4, "big") for x in images.shape)
    open(os.path.join(d, fname), "wb").write(gzip.compress(raw + images.tobytes()[:-100]))


def _empty_folder(d, fname):
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))


BAD_INPUTS = [  # (id, how to break the good folder, file it concerns, words the message must hold)
    ("missing-file", _drop, "t10k-labels-idx1-ubyte.gz", ["missing file"]),
    ("truncated-gzip", _truncate_gzip, "train-images-idx3-ubyte.gz", ["truncated or corrupt"]),
    ("corrupt-gzip", _corrupt_gzip, "train-images-idx3-ubyte.gz", ["not a readable gzip"]),
    ("not-gzip", _not_gzip, "t10k-images-idx3-ubyte.gz", ["not a readable gzip"]),
    ("wrong-magic", _wrong_magic, "train-labels-idx1-ubyte.gz",
     ["IDX magic 0x00000803", "expected 0x00000801"]),
    ("not-28x28", _not_28x28, "train-images-idx3-ubyte.gz", ["32x32", "expected 28x28"]),
    ("count-mismatch", _fewer_labels, "train-labels-idx1-ubyte.gz",
     [f"{N_TRAIN} images", f"{N_TRAIN - 1} labels"]),
    ("label-out-of-range", _label_out_of_range, "t10k-labels-idx1-ubyte.gz",
     ["outside 0-9", "12 at index 3"]),
    ("short-idx-payload", _short_payload, "t10k-images-idx3-ubyte.gz", ["truncated or padded"]),
    ("empty-folder", _empty_folder, None, ["is empty"]),
]


@pytest.mark.parametrize("break_it, fname, words", [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_manual_files_fail_clearly_and_leave_nothing(good, tmp_path, break_it, fname, words):
    manual, arrays = good
    data_dir = str(tmp_path / "data")
    break_it(manual, fname)
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual)
    msg = str(e.value)
    assert "\n" not in msg
    assert (fname or manual) in msg, msg
    for w in words:
        assert w in msg, msg
    assert_nothing_left(data_dir)
    # The next run with good files just works.
    write_manual_dir(manual, arrays)
    assert data.load("mnist", data_dir=data_dir, manual_dir=manual).source == "manual"


def test_bad_files_fail_before_tensorflow_is_imported(good, tmp_path):
    manual, _ = good
    _truncate_gzip(manual, "train-labels-idx1-ubyte.gz")
    code = textwrap.dedent(f"""
        import sys
        from jaxmlp import data
        try:
            data.load("mnist", data_dir={str(tmp_path / "data")!r}, manual_dir={manual!r})
        except data.DataError as e:
            print(e)
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """)
    out = run_python(code)
    assert "train-labels-idx1-ubyte.gz is not a readable gzip" in out.stdout, out.stdout


def test_missing_manual_dir(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("mnist", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path / "nope"))
    assert_nothing_left(tmp_path / "data")


def test_unwritable_data_dir(good, tmp_path):
    manual, _ = good
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    data_dir = str(blocker / "data")  # cannot be created, even by root
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual)
    assert "cannot be written" in str(e.value) and data_dir in str(e.value)
    assert blocker.read_text() == "not a folder"


def test_read_only_data_dir(good, tmp_path):
    """A data dir nothing can be written into, for root too: permission bits would not
    stop root, so the path is a regular file, in which no process can create entries
    (the staging folder's mkdir fails with EEXIST/ENOTDIR whatever the user's rights).
    A ``load`` that skipped the pre-flight, or let TFDS write first, would fail late,
    with another message, or leave a staging folder beside it."""
    manual, _ = good
    data_dir = tmp_path / "data"
    data_dir.write_bytes(b"a file, not a folder")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(data.DataError, match="cannot be written") as e:
        data.load("mnist", data_dir=str(data_dir), manual_dir=manual)
    assert str(data_dir) in str(e.value) and "\n" not in str(e.value)
    assert data_dir.read_bytes() == b"a file, not a folder"
    assert sorted(os.listdir(tmp_path)) == before  # nothing left beside it either


def test_failure_while_tfds_prepares_leaves_nothing(good, tmp_path, monkeypatch):
    manual, arrays = good
    data_dir = str(tmp_path / "data")
    builder_cls = data._manual_builder_cls("mnist")
    real = builder_cls._generate_examples

    def dies_midway(self, images, labels):
        for i, example in enumerate(real(self, images, labels)):
            if i == 10:
                raise OSError(28, "No space left on device (simulated)")
            yield example

    monkeypatch.setattr(builder_cls, "_generate_examples", dies_midway)
    with pytest.raises(data.DataError, match="No space left on device") as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual)
    assert "\n" not in str(e.value)
    assert_nothing_left(data_dir)
    monkeypatch.undo()
    ds = data.load("mnist", data_dir=data_dir, manual_dir=manual)
    assert ds.source == "manual"
    assert_same_examples(ds.train_images, ds.train_labels,
                         arrays["train_images"], arrays["train_labels"])


# --- offline ---------------------------------------------------------------------------------

FIXES = ["--data-dir", "--manual-dir", "apt-get install dataset-fashion-mnist",
         "--dataset fashion_mnist --manual-dir /usr/share/datasets/fashion-mnist",
         'README, section "Offline"']


@pytest.mark.parametrize("name", DATASETS)
def test_offline_fails_fast_with_three_ways_forward(name, tmp_path, no_network):
    data_dir = str(tmp_path / "data")
    start = time.monotonic()
    with pytest.raises(data.DataError) as e:
        data.load(name, data_dir=data_dir)
    assert time.monotonic() - start < 10
    msg = str(e.value)
    assert "\n" not in msg
    assert name in msg and data_dir in msg and "Connection refused" in msg, msg
    for fix in FIXES:
        assert fix in msg, (fix, msg)
    assert_nothing_left(data_dir)


def test_offline_with_a_host_that_never_answers(tmp_path, monkeypatch):
    # DNS or a dropped SYN can hang past any socket timeout; the probe must not.
    def hang(address, timeout=None, *args, **kwargs):
        time.sleep(60)
        raise TimeoutError("never answered")  # the abandoned thread ends quietly

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    with pytest.raises(data.DataError, match="did not answer within"):
        data.load("kmnist", data_dir=str(tmp_path / "data"))
    assert time.monotonic() - start < data.PROBE_TIMEOUT_S + 3 <= 10


def test_probe_targets_the_builders_host_or_its_proxy(monkeypatch):
    seen = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda address, timeout=None: seen.append(address) or socket.socket())
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert data._probe("https://storage.googleapis.com/cvdf-datasets/mnist/") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert data._probe("https://storage.googleapis.com/cvdf-datasets/mnist/") is None
    assert seen == [("storage.googleapis.com", 443), ("proxy.example", 3128)]


# --- round trip and warm cache ---------------------------------------------------------------

def test_round_trip_through_tfds(prepared):
    import tensorflow_datasets as tfds

    data_dir, arrays, ds = prepared
    assert (ds.name, ds.version) == ("mnist", str(tfds.builder_cls("mnist").VERSION))
    for images, labels, n in ((ds.train_images, ds.train_labels, N_TRAIN),
                              (ds.test_images, ds.test_labels, N_TEST)):
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int32
    assert_same_examples(ds.train_images, ds.train_labels,
                         arrays["train_images"], arrays["train_labels"])
    assert_same_examples(ds.test_images, ds.test_labels,
                         arrays["test_images"], arrays["test_labels"])
    # A real TFDS dataset, where TFDS itself finds it; no staging folder left behind.
    builder = tfds.builder("mnist", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == N_TRAIN
    assert sorted(os.listdir(data_dir)) == ["jaxmlp_cache", "mnist"]


def test_second_load_uses_the_cache_without_manual_dir(prepared):
    data_dir, _, first = prepared
    again = data.load("mnist", data_dir=data_dir)
    assert again.source == "cache"
    for a, b in zip(first[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    # Once prepared, manual_dir is not read again (even if it is gone).
    assert data.load("mnist", data_dir=data_dir, manual_dir="/nonexistent").source == "cache"


WARM_LOAD = """
import sys
from jaxmlp import data
ds = data.load("mnist", data_dir={data_dir!r})
assert ds.source == "cache", ds.source
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
print(int(ds.train_images.astype(int).sum()), int(ds.test_labels.sum()), ds.version,
      "tensorflow_datasets" in sys.modules)
"""


def test_warm_load_imports_neither_tensorflow_nor_tfds(prepared):
    import tensorflow_datasets as tfds

    data_dir, _, first = prepared
    out = run_python(WARM_LOAD.format(data_dir=data_dir))
    assert out.stdout.split() == [str(int(first.train_images.astype(int).sum())),
                                  str(int(first.test_labels.sum())),
                                  str(tfds.builder_cls("mnist").VERSION), "False"]


def test_warm_load_without_its_version_note_asks_tfds_once(prepared_copy):
    # The note is what lets a warm load skip TFDS; without it (a new TFDS release, a
    # cache from an older jaxmlp) the load goes through TFDS, still from the cache,
    # and leaves the note for the next one.
    data_dir, first = prepared_copy
    folder = os.path.join(data_dir, "jaxmlp_cache", "mnist")
    notes = [f for f in os.listdir(folder) if f.endswith(".version")]
    assert len(notes) == 1
    os.remove(os.path.join(folder, notes[0]))
    expect = [str(int(first.train_images.astype(int).sum())), str(int(first.test_labels.sum())),
              first.version]
    assert run_python(WARM_LOAD.format(data_dir=data_dir)).stdout.split() == expect + ["True"]
    assert run_python(WARM_LOAD.format(data_dir=data_dir)).stdout.split() == expect + ["False"]
    # A note naming a version that is not prepared is a miss, not an error.
    open(os.path.join(folder, notes[0]), "w").write("9.9.9")
    assert run_python(WARM_LOAD.format(data_dir=data_dir)).stdout.split() == expect + ["True"]


def test_default_data_dir_is_tfds_own(tmp_path):
    # Read without importing TFDS on the warm path; it must be the folder TFDS would use.
    code = textwrap.dedent("""
        import sys
        from jaxmlp import data_cache
        ours = data_cache.default_data_dir()
        assert "tensorflow_datasets" not in sys.modules
        import tensorflow_datasets as tfds
        print(ours == tfds.core.constants.DATA_DIR == data_cache.default_data_dir())
    """)
    for env in ({"TFDS_DATA_DIR": str(tmp_path / "elsewhere")}, {"HOME": str(tmp_path)}):
        with pytest.MonkeyPatch.context() as m:
            m.delenv("TFDS_DATA_DIR", raising=False)
            for k, v in env.items():
                m.setenv(k, v)
            assert run_python(code).stdout.split() == ["True"]


def test_damaged_cache_is_rebuilt(prepared, tmp_path):
    data_dir = str(tmp_path / "data")
    shutil.copytree(prepared[0], data_dir)
    cache = os.path.join(data_dir, "jaxmlp_cache", "mnist", prepared[2].version, "train.npz")
    open(cache, "wb").write(b"PK\x03\x04 not really a zip")
    ds = data.load("mnist", data_dir=data_dir)
    assert ds.source == "tfds"
    np.testing.assert_array_equal(ds.train_images, prepared[2].train_images)
    assert data.load("mnist", data_dir=data_dir).source == "cache"


def test_cache_does_not_outlive_its_tfds_dataset(prepared, tmp_path):
    # Replacing the prepared TFDS dataset must not serve the old decoded arrays.
    data_dir = str(tmp_path / "data")
    shutil.copytree(prepared[0], data_dir)
    other = make_arrays(seed=2)
    other_dir = str(tmp_path / "other_data")
    data.load("mnist", data_dir=other_dir, manual_dir=write_manual_dir(tmp_path / "other", other))
    shutil.rmtree(os.path.join(data_dir, "mnist"))
    shutil.copytree(os.path.join(other_dir, "mnist"), os.path.join(data_dir, "mnist"))
    ds = data.load("mnist", data_dir=data_dir)
    assert ds.source == "tfds"
    assert_same_examples(ds.test_images, ds.test_labels, other["test_images"], other["test_labels"])
    # Deleting it outright makes the cache entry a miss too (here: offline, so an error).
    shutil.rmtree(os.path.join(data_dir, "mnist"))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(data, "_probe", lambda url: "is unreachable (simulated)")
        with pytest.raises(data.DataError, match="not prepared"):
            data.load("mnist", data_dir=data_dir)


def test_cache_files_are_only_the_finished_ones(prepared):
    folder = os.path.join(prepared[0], "jaxmlp_cache", "mnist", prepared[2].version)
    assert sorted(os.listdir(folder)) == ["test.npz", "train.npz"]


# --- tfds.testing.mock_data ------------------------------------------------------------------

def test_mock_data_is_loaded_by_iterating_and_never_cached(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "data")
    with tfds.testing.mock_data(num_examples=7):
        ds = data.load("fashion_mnist", data_dir=data_dir)
    assert ds.source == "mock"
    assert ds.train_images.shape == (7, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (7,) and ds.test_labels.dtype == np.int32
    assert ((0 <= ds.train_labels) & (ds.train_labels < 10)).all()
    assert_nothing_left(data_dir)


def test_mock_data_never_sees_the_warm_cache(prepared):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        ds = data.load("mnist", data_dir=prepared[0])
    assert ds.source == "mock" and len(ds.train_labels) == 7


def test_mock_data_applies_tfds_slices(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "data")
    with tfds.testing.mock_data(num_examples=8):
        whole = data.load("mnist", data_dir=data_dir)
        part = data.load("mnist", data_dir=data_dir, train_split="train[3:]",
                         test_split="test[:50%]")
    assert (part.train_split, part.test_split) == ("train[3:]", "test[:50%]")
    np.testing.assert_array_equal(part.train_images, whole.train_images[3:])
    np.testing.assert_array_equal(part.test_labels, whole.test_labels[:4])
    assert_nothing_left(data_dir)


# --- split strings ---------------------------------------------------------------------------

@pytest.fixture
def prepared_copy(prepared, tmp_path):
    """A private copy of the prepared data dir (its cache gains files here)."""
    data_dir = str(tmp_path / "data")
    shutil.copytree(prepared[0], data_dir)
    return data_dir, prepared[2]


def test_sliced_splits_are_tfds_slices_of_the_whole_splits(prepared_copy):
    data_dir, whole = prepared_copy
    ds = data.load("mnist", data_dir=data_dir, train_split="train[10:]", test_split="test[50%:]")
    assert (ds.train_split, ds.test_split) == ("train[10:]", "test[50%:]")
    assert (len(ds.train_labels), len(ds.test_labels)) == (N_TRAIN - 10, N_TEST // 2)
    # Exactly the examples TFDS's order puts there: the whole split minus its head.
    np.testing.assert_array_equal(ds.train_images, whole.train_images[10:])
    np.testing.assert_array_equal(ds.train_labels, whole.train_labels[10:])
    np.testing.assert_array_equal(ds.test_images, whole.test_images[N_TEST // 2:])
    np.testing.assert_array_equal(ds.test_labels, whole.test_labels[N_TEST // 2:])
    assert (whole.train_split, whole.test_split) == ("train", "test")


def test_cache_is_keyed_by_split_string(prepared_copy):
    data_dir, whole = prepared_copy
    # "train" is cached already; "train[10:]" must still be read from TFDS, not served from it.
    first = data.load("mnist", data_dir=data_dir, train_split="train[10:]")
    assert first.source == "tfds" and len(first.train_labels) == N_TRAIN - 10
    folder = os.path.join(data_dir, "jaxmlp_cache", "mnist", whole.version)
    assert sorted(os.listdir(folder)) == ["test.npz", "train%5B10%3A%5D.npz", "train.npz"]
    for split, want in (("train", whole.train_images), ("train[10:]", whole.train_images[10:]),
                        ("train", whole.train_images)):
        again = data.load("mnist", data_dir=data_dir, train_split=split)
        assert again.source == "cache" and again.train_split == split
        np.testing.assert_array_equal(again.train_images, want)


BAD_SPLITS = [  # (split string, words the message must hold)
    ("train[abc]", ["Unrecognized split format"]),
    ("validation", ["Unknown split 'validation'"]),
    ("train[5:3]", ["selects no examples"]),
    ("train[:10%", ["Unrecognized split format"]),
    ("", []),
]


@pytest.mark.parametrize("role", ["train_split", "test_split"])
@pytest.mark.parametrize("split, words", BAD_SPLITS, ids=[b[0] or "empty" for b in BAD_SPLITS])
def test_bad_split_string_fails_in_one_line_before_any_work(good, tmp_path, role, split, words):
    manual, _ = good
    data_dir = str(tmp_path / "data")
    start = time.monotonic()
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, manual_dir=manual, **{role: split})
    assert time.monotonic() - start < 3  # checked before preparing anything (which takes longer)
    msg = str(e.value)
    assert "\n" not in msg and f"bad {role} {split!r}" in msg and "'train[5000:]'" in msg, msg
    for w in words:
        assert w in msg, msg
    assert_nothing_left(data_dir)


def test_slice_past_the_end_fails_in_one_line(prepared_copy):
    data_dir, _ = prepared_copy
    with pytest.raises(data.DataError) as e:
        data.load("mnist", data_dir=data_dir, test_split=f"test[:{N_TEST + 1}]")
    msg = str(e.value)
    assert "\n" not in msg and f"incompatible with {N_TEST} examples" in msg, msg
