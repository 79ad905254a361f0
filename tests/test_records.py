"""Run records: atomic writers survive SIGKILL, pre-flight checks, environment, loading."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, child_env
from jaxmlp import history as hist
from jaxmlp import records, runs
from jaxmlp.runs import FILES, RunFiles


def _strict_json(text: str):
    """json.loads that refuses the non-standard NaN/Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- atomic writers -------------------------------------------------------------


def test_json_is_sorted_standard_and_writes_non_finite_as_null(tmp_path):
    obj = {"b": float("nan"), "a": [np.float32(0.5), float("inf"), -float("inf")],
           "c": {"z": np.int64(3), "y": np.array([1.0, np.nan]), "path": tmp_path / "x"}}
    path = records.atomic_write_json(tmp_path / "s.json", obj)
    text = path.read_text()
    assert _strict_json(text) == {"a": [0.5, None, None], "b": None,
                                  "c": {"path": str(tmp_path / "x"), "y": [1.0, None], "z": 3}}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')  # sorted keys
    assert text.startswith("{\n  ")  # indented
    assert _entries(tmp_path) == ["s.json"]


def test_writers_replace_the_old_file_and_honour_the_umask(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    records.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    # Same permissions as a file made by open(): not mkstemp's private 0o600.
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert _entries(tmp_path) == ["f.bin", "plain"]


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "f.json"
    records.atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        records.atomic_write_bytes(target, "a str is not bytes")  # fails inside the write
    with pytest.raises(ValueError, match="dtype object"):
        records.atomic_save_npz(tmp_path / "h.npz", {"bad": np.array([{}, 1], dtype=object)})
    assert _strict_json(target.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["f.json"]


def test_npz_roundtrip_loads_without_pickle_at_the_exact_name(tmp_path):
    arrays = {"train_loss": np.linspace(2.3, 0.1, 7, dtype=np.float32),
              "test_step": np.arange(0, 300, 100, dtype=np.int32),
              "weight_percentiles": np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32),
              "members": np.array(["seed0", "seed1"])}
    path = records.atomic_save_npz(tmp_path / "history.tmpname", arrays)  # no ".npz" appended
    assert path.name == "history.tmpname" and _entries(tmp_path) == ["history.tmpname"]
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(arrays)
        for name, value in arrays.items():
            np.testing.assert_array_equal(f[name], value)
            assert f[name].dtype == value.dtype


# The writer runs in its own process, loading records.py by path so the test
# does not depend on what the package's __init__ imports.
_WRITER = r"""
import importlib.util, sys
from pathlib import Path
import numpy as np
spec = importlib.util.spec_from_file_location("records_under_test", sys.argv[1])
records = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = records  # importlib's recipe: dataclasses look their module up there
spec.loader.exec_module(records)
out, version = Path(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
while True:
    version += 1
    records.atomic_save_npz(out / "history.npz",
                            {"version": np.int64(version), "data": np.full(1_000_000, version, np.int64)})
    # A long string: cheap to serialise, so the writer spends its time inside the write.
    records.atomic_write_json(out / "summary.json", {"version": version, "data": str(version) * 4_000_000})
"""


def _read_complete(directory: Path) -> dict[str, int]:
    """Version of each target present; fails the test on a partial or inconsistent file."""
    versions = {}
    npz = directory / "history.npz"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as f:
            v, data = int(f["version"]), f["data"]
        assert data.shape == (1_000_000,) and (data == v).all(), "history.npz is not one complete version"
        versions["history.npz"] = v
    js = directory / "summary.json"
    if js.exists():
        obj = _strict_json(js.read_text())
        v = obj["version"]
        assert obj["data"] == str(v) * 4_000_000, "summary.json is not one complete version"
        versions["summary.json"] = v
    return versions


def test_sigkill_during_writes_leaves_old_or_new_files_never_partial(tmp_path):
    rng = random.Random(0)
    seen: dict[str, int] = {}
    leftovers: set[str] = set()  # temp files of killed writers
    kills_mid_write = 0
    start_version = 0
    # Kill until at least two kills have landed mid-write (each round ~0.4 s).
    for round_ in range(30):
        if round_ >= 4 and kills_mid_write >= 2:
            break
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(ROOT / "jaxmlp" / "records.py"),
                                 str(tmp_path), str(start_version)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.1, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        versions = _read_complete(tmp_path)
        for name, v in versions.items():
            assert v >= seen.get(name, 0), f"{name} went back from version {seen[name]} to {v}"
        seen.update(versions)
        start_version = max(seen.values(), default=0)
        others = [n for n in _entries(tmp_path) if n not in ("history.npz", "summary.json")]
        assert all(records.is_temp_file(n) for n in others), f"unexpected files {others}"
        kills_mid_write += bool(set(others) - leftovers)
        leftovers |= set(others)
    # The kills must have hit writes in progress, and writes must have completed in between.
    assert kills_mid_write >= 2, "kills did not land mid-write; the test proved nothing"
    assert len(seen) == 2 and min(seen.values()) >= 2
    removed = records.remove_stale_temp_files(tmp_path)
    assert {p.name for p in removed} == leftovers
    assert _entries(tmp_path) == ["history.npz", "summary.json"]


def test_remove_stale_temp_files_keeps_live_writers_and_other_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".history.npz.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".history.npz.{os.getpid()}.0123abcd.tmp"
    for p in (stale, live, tmp_path / "history.npz", tmp_path / ".hidden.tmp"):
        p.write_bytes(b"x")
    assert records.remove_stale_temp_files(tmp_path) == [stale]
    assert _entries(tmp_path) == sorted([live.name, "history.npz", ".hidden.tmp"])


# --- pre-flight ---------------------------------------------------------------


def test_check_writable_creates_the_directory_and_leaves_nothing(tmp_path):
    out = records.check_writable(tmp_path / "a" / "b", min_free_bytes=1)
    assert out.is_dir() and _entries(out) == []


def test_check_writable_fails_in_one_line_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # Works as root too: no permission bit stops root, but a file cannot hold a directory.
    with pytest.raises(records.RecordError, match="cannot create output directory") as e:
        records.check_writable(blocker / "run")
    assert "\n" not in str(e.value) and str(blocker / "run") in str(e.value)
    with pytest.raises(records.RecordError, match="not a directory"):
        records.check_writable(blocker)


def test_check_writable_fails_when_the_probe_write_fails(tmp_path, monkeypatch):
    real_open = os.open

    def read_only_fs(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_fs)
    with pytest.raises(records.RecordError, match="cannot write to output directory .*Read-only"):
        records.check_writable(tmp_path)


def test_check_writable_fails_on_low_free_space(tmp_path, monkeypatch):
    import shutil
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(records.RecordError, match=r"5\.0 MiB free, need at least 64\.0 MiB"):
        records.check_writable(tmp_path / "run")
    assert records.check_writable(tmp_path / "run", min_free_bytes=2**20).is_dir()
    assert issubclass(records.RecordError, OSError)


# --- environment --------------------------------------------------------------


def test_environment_reports_versions_and_devices_without_importing_tensorflow():
    code = ("import json, sys; from jaxmlp import records; env = records.environment(); "
            "tf = any(m.split('.')[0] == 'tensorflow' for m in sys.modules); "
            "print(json.dumps({'env': env, 'tf': tf}))")
    env_vars = child_env(JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_vars,
                          timeout=120, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    env = out["env"]
    assert not out["tf"], "environment() imported tensorflow"
    for key, dist in [("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
                      ("tensorflow_datasets", "tensorflow-datasets"), ("numpy", "numpy")]:
        assert env[key] == importlib.metadata.version(dist)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["backend"] == "cpu" and env["device_count"] >= 1 and env["device_kind"]


# --- loading ------------------------------------------------------------------


def test_load_run_reads_what_was_written_and_marks_optional_files(tmp_path):
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    history = {"train_loss": f32(2.3, 1.0), "train_accuracy": f32(0.1, 0.5), "test_step": np.array([0, 2]),
               "test_loss": f32(2.3, 0.9), "test_accuracy": f32(0.1, 0.6)}
    records.atomic_save_npz(tmp_path / FILES.history, history)
    summary, h, wrong = runs.load_run(tmp_path)
    assert summary is None and wrong is None
    np.testing.assert_array_equal(h["train_loss"], history["train_loss"])
    records.atomic_write_json(tmp_path / FILES.summary, {"final_test_accuracy": 0.98})
    records.atomic_save_npz(tmp_path / FILES.misclassified,
                            {"image": np.zeros((0, 28, 28), np.uint8), "predicted": np.zeros(0, np.int32),
                             "label": np.zeros(0, np.int32)})
    summary, _, wrong = runs.load_run(tmp_path)
    assert summary == {"final_test_accuracy": 0.98} and wrong["image"].shape == (0, 28, 28)


def test_load_run_errors_are_one_line_and_name_the_problem(tmp_path):
    with pytest.raises(records.RecordError, match="does not exist"):
        runs.load_run(tmp_path / "nope")
    with pytest.raises(records.RecordError, match=r"no history\.npz in") as e:
        runs.load_run(tmp_path)
    assert "\n" not in str(e.value)
    records.atomic_save_npz(tmp_path / FILES.history, {"train_loss": np.zeros(3)})
    with pytest.raises(records.RecordError, match="lacks the arrays train_accuracy, test_step"):
        runs.load_run(tmp_path)
    (tmp_path / FILES.history).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(records.RecordError, match="cannot read") as e:
        runs.load_run(tmp_path)
    assert "\n" not in str(e.value)


def test_load_run_requires_what_the_schema_marks_required(tmp_path, monkeypatch):
    h = {k: np.zeros(2, np.float32) for k in hist.REQUIRED}
    records.atomic_save_npz(tmp_path / FILES.history, h)
    runs.load_run(tmp_path)  # the optional keys (train_step, percentiles, ...) may be absent
    monkeypatch.setattr(hist, "REQUIRED", (*hist.REQUIRED, "train_grad_norm"))
    with pytest.raises(records.RecordError, match="lacks the arrays train_grad_norm"):
        runs.load_run(tmp_path)


# --- run folder names ----------------------------------------------------------


def test_run_files_name_every_file_of_a_run_folder(tmp_path):
    assert RunFiles.all_names() == ("config.json", "history.npz", "summary.json", "misclassified.npz",
                                    "checkpoints", "accuracy.png", "cross_entropy.png", "dashboard.png")
    assert (FILES.history, FILES.summary, FILES.checkpoints) == ("history.npz", "summary.json", "checkpoints")
    paths = RunFiles.under(tmp_path / "run")
    assert paths.history == tmp_path / "run" / "history.npz"
    assert [p.name for p in astuple(paths)] == list(RunFiles.all_names())


def test_the_figures_plot_writes_are_run_files(tmp_path):
    from jaxmlp import plot  # matplotlib: only here

    from conftest import synthetic_history
    written = plot.plot_history(synthetic_history(steps=20, eval_every=10), tmp_path)
    paths = RunFiles.under(tmp_path)
    assert written == [paths.accuracy_png, paths.cross_entropy_png, paths.dashboard_png]
    assert set(plot.FIGURE_SIZES) <= set(RunFiles.all_names())


def test_dashboards_of_several_runs_get_distinct_safe_names():
    assert RunFiles.dashboards(["a", "b"]) == ["dashboard-a.png", "dashboard-b.png"]
    assert RunFiles.dashboards(["x/seed 0", "x/seed:0", ""]) == [
        "dashboard-x_seed_0.png", "dashboard-x_seed_0_.png", "dashboard-run.png"]


def test_run_labels_are_short_and_distinct():
    assert runs.run_labels(["runs/a", "runs/b"]) == ["a", "b"]
    assert runs.run_labels(["x/seed0/run", "y/seed0/run"]) == ["x/seed0/run", "y/seed0/run"]
