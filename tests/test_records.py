"""Run folders: atomic writes, one run per folder, the default folder and 'latest'."""

import json
import os

import numpy as np
import pytest

from jaxmlp import records


def test_json_writes_non_finite_as_null_and_arrays_as_lists(tmp_path):
    p = records.atomic_write_json(tmp_path / "s.json", {"a": np.float32(np.nan), "b": np.arange(2),
                                                        "c": np.float32(0.5), "d": np.array(3.0)})
    assert json.loads(p.read_text()) == {"a": None, "b": [0, 1], "c": 0.5, "d": 3.0}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "h.npz"
    records.atomic_save_npz(path, {"x": np.arange(3)})

    class Boom:
        def __array__(self, *a, **k):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        records.atomic_save_npz(path, {"x": np.arange(5), "y": Boom()})
    with np.load(path) as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["h.npz"]


def test_clear_run_removes_only_a_runs_files(tmp_path):
    for name in (records.CONFIG, records.SUMMARY, ".history.npz.tmp123", "mine.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / records.CHECKPOINTS / "20").mkdir(parents=True)
    assert records.holds_a_run(tmp_path)
    records.clear_run(tmp_path)
    assert os.listdir(tmp_path) == ["mine.txt"] and not records.holds_a_run(tmp_path)


def test_a_locked_folder_is_refused_to_a_second_holder(tmp_path):
    with records.locked(tmp_path):
        with pytest.raises(records.RecordError, match="in use by another jaxmlp run"):
            with records.locked(tmp_path):
                pass
    with records.locked(tmp_path):  # released
        pass


def test_default_folders_are_new_and_latest_points_to_the_newest(tmp_path):
    a = records.default_run_dir(tmp_path, "mnist")
    os.makedirs(a)
    b = records.default_run_dir(tmp_path, "mnist")
    assert a != b and a.endswith("-mnist") and b.endswith("-mnist-1")
    records.point_latest(a)
    assert os.path.realpath(tmp_path / "latest") == os.path.realpath(a)
    assert os.readlink(tmp_path / "latest") == os.path.basename(a)  # relative: the folder may move


def test_read_config_errors_are_one_line(tmp_path):
    with pytest.raises(records.RecordError, match="does not exist"):
        records.read_config(tmp_path / "nope")
    with pytest.raises(records.RecordError, match="has no config.json"):
        records.read_config(tmp_path)
    (tmp_path / records.CONFIG).write_text("[1")
    with pytest.raises(records.RecordError) as e:
        records.read_config(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(records.RecordError, match="not writable|cannot make"):
        records.make_folder(tmp_path / records.CONFIG / "x")
