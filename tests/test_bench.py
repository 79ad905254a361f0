"""The benchmark measures like with like: same numbers from every path, sane FLOPs, full output.

No timing assertions: timings on a shared machine are noise.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, child_env

from jaxmlp import loop, model, train
from jaxmlp.bench import accelerator, data as bench_data, paths, processes, run, timing
from jaxmlp.config import Config

SMALL = Config(hidden=(32, 16))
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def small():
    """(host arrays, device data, orders, state): 600 training examples, batch 50."""
    host, data = bench_data.synthetic_data(seed=1, num_train=600, num_test=100)
    orders = loop.epoch_orders(jax.random.key(2), num_epochs=2, num_examples=600)
    return host, data, orders, loop.init_state(jax.random.key(3), SMALL)


@pytest.mark.parametrize("f32", [False, True], ids=["uint8", "float32"])
def test_plain_jax_reference_equals_run_steps(small, f32):
    """Same init, data and sampling: the hand-written loop reproduces jaxmlp's losses and params."""
    _, data, orders, state = small
    data = bench_data.as_float32(data) if f32 else data
    carry = (paths.reference_params(state), jnp.zeros((), jnp.int32))
    (ref_params, ref_step), ref = paths.reference_run_steps(
        carry, data.train_images, data.train_labels, orders, train.learning_rate_of(state),
        num_steps=15, batch_size=50)  # crosses the epoch boundary (12 steps per epoch)
    ours, metrics = loop.run_steps(loop.copy_tree(state), data, orders, num_steps=15, batch_size=50)
    np.testing.assert_allclose(ref["loss"], metrics["loss"], rtol=1e-5)
    np.testing.assert_array_equal(ref["accuracy"], metrics["accuracy"])
    assert int(ref_step) == int(ours.step) == 15
    for (w, b), (w2, b2) in zip(ref_params, paths.reference_params(ours)):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", paths.VARIANTS)
def test_every_timed_path_computes_the_same_losses(small, variant):
    """Each timed loop, started from the same state, sees the same batches and losses (the
    metrics-after path: the losses of the same updates, read after each)."""
    host, data, orders, state = small
    metrics = "after" if variant == "fused_after" else "before"
    _, expected = loop.run_steps(loop.copy_tree(state), data, orders, num_steps=6, batch_size=50,
                                 metrics=metrics)
    timed = paths.make_loop(variant, loop.copy_tree(state), host=host, data=data, orders=orders,
                            batch_size=50, scan_steps=3)
    losses = np.concatenate([np.atleast_1d(timed.call()["loss"])
                             for _ in range(6 // timed.steps_per_call)])
    np.testing.assert_allclose(losses, expected["loss"], rtol=1e-5)


@pytest.mark.parametrize("kind", paths.KINDS)
def test_ensemble_loop_runs_k_models_of_each_kind(small, kind):
    """K seeds: own init and data order per member; K learning rates: one start, own rate."""
    _, data, _, _ = small
    config = paths.ensemble_config(kind, 2, SMALL.replace(batch_size=50), num_examples=600)
    assert len(config.members) == 2 and config.steps == 24  # two epochs of 12 steps
    seeds, lrs = zip(*config.members)
    assert (len(set(seeds)), len(set(lrs))) == ((2, 1) if kind == "seeds" else (1, 2))
    timed = paths.make_ensemble_loop(config, data=data, scan_steps=4)
    loss = np.asarray(timed.call()["loss"])
    assert loss.shape == (2, 4) and timed.models == 2 and np.isfinite(loss).all()
    if kind == "seeds":
        assert not np.allclose(loss[0], loss[1])
    else:  # the same model and batch before the first update, then the rates tell
        np.testing.assert_allclose(loss[0, 0], loss[1, 0], rtol=1e-5)
        assert not np.allclose(loss[0, 1:], loss[1, 1:])


def test_each_ensemble_is_compared_with_the_model_timed_in_turns_with_it(small, monkeypatch):
    """Catches ``vs_single`` against one model timed once, minutes before the ensembles
    (the machine's drift went into the ratio): every K is timed with a model of its own."""
    from jaxmlp.bench import measure

    _, data, _, _ = small
    groups = []

    def fake(loops, **_):  # group g: the model at 100 g steps/s, the ensembles just above it
        groups.append([timed.models for timed in loops])
        g = len(groups)
        return [{"steps_per_s": timing.stats([100.0 * g + i]), "calls_per_repeat": 1,
                 "steps_per_call": 1} for i in range(len(loops))]

    monkeypatch.setattr(measure, "measure_side_by_side", fake)
    out = measure.ensembles(SMALL.replace(batch_size=50), kinds=paths.KINDS, sizes=(2, 1), data=data,
                            scan_steps=lambda k: 4, timing={})
    assert groups == [[1, 1, 1], [1, 2, 2]]  # per K, increasing: one model first, then each kind
    assert out["single"]["model_steps_per_s"] == 100.0
    for row in out["rows"]:
        g = 1 if row["k"] == 1 else 2
        i = 1 + paths.KINDS.index(row["kind"])
        assert row["single_model_steps_per_s"] == 100.0 * g
        assert row["vs_single"] == pytest.approx((100.0 * g + i) * row["k"] / (100.0 * g))


def test_flops_per_step_is_near_the_analytic_count(small):
    _, data, orders, _ = small
    hidden = run.DEFAULT_HIDDEN
    state = loop.init_state(jax.random.key(0), Config(hidden=hidden))
    info = timing.flops_per_step(state, data, orders, batch_size=100, scan_steps=4)
    analytic = timing.analytic_flops(hidden, 100)
    assert analytic["weights"] == 784 * 200 + 200 * 100 + 100 * 60 + 60 * 30 + 30 * 10
    if info["xla_flops_per_step"] is None:
        pytest.skip("this backend gives no cost analysis")
    assert 0.5 <= info["xla_flops_per_step"] / analytic["six_bw"] <= 2.0


def test_device_peak_table_matches_common_device_kinds():
    class Dev:
        def __init__(self, kind, platform="gpu"):
            self.device_kind, self.platform = kind, platform

    peak = lambda *args: timing.device_peak(Dev(*args))
    assert peak("NVIDIA H100 80GB HBM3")["name"] == "H100 SXM"
    assert peak("NVIDIA H100 PCIe")["name"] == "H100 PCIe"
    assert peak("NVIDIA H200")["precision"] == "tf32"
    assert peak("NVIDIA A100-SXM4-40GB")["precision"] == "tf32"
    assert peak("NVIDIA L40S")["name"] == "L40S" and peak("NVIDIA L4")["name"] == "L4"
    assert peak("Tesla T4")["precision"] == "fp32"
    assert peak("TPU v5 lite", "tpu")["name"] == "TPU v5e"
    assert peak("TPU v5", "tpu")["name"] == "TPU v5p"
    assert peak("TPU v4", "tpu")["flops_per_s"] == 275e12
    assert peak("Some New Chip") is None and peak("cpu", "cpu") is None


def test_bad_config_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown variants"):
        run.BenchConfig(variants=("fused", "nope"))
    with pytest.raises(ValueError, match="batch size"):
        run.BenchConfig(batch_sizes=(0,))
    with pytest.raises(ValueError, match="unknown ensemble kinds"):
        run.BenchConfig(ensemble_kinds=("widths",))
    with pytest.raises(ValueError, match="unknown variants"):
        accelerator.AcceleratorConfig(sweep_variants=("nope",))
    with pytest.raises(ValueError):  # eval_every (100) must divide the schedule
        accelerator.AcceleratorConfig(schedule_steps=150)


def test_learnable_data_is_learnable_and_npz_data_round_trips(tmp_path):
    d = bench_data.learnable_dataset(seed=0, num_train=2_000, num_test=500)
    assert d.train_images.dtype == np.uint8 and d.train_images.shape == (2_000, 28, 28)
    # The class maps differ, so class means separate the classes well above chance (0.1).
    means = np.stack([d.train_images[d.train_labels == c].reshape(-1, 784).mean(0) for c in range(10)])
    guess = np.argmax(d.test_images.reshape(-1, 784) @ (means - means.mean(0)).T, -1)
    assert np.mean(guess == d.test_labels) > 0.5
    path = tmp_path / "d.npz"
    np.savez(path, **{k: getattr(d, k) for k in bench_data.SPLIT_KEYS})
    back = bench_data.npz_dataset(str(path))
    for k in bench_data.SPLIT_KEYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(d, k))
    np.savez(path, train_images=d.train_images)
    with pytest.raises(ValueError, match="lacks"):
        bench_data.npz_dataset(str(path))


# Runs the script given as argv[1] with TensorFlow and TFDS unimportable, as on the GPU machine.
_WITHOUT_TF = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _benchmark(tmp_path, *args, without_tf=False):
    """Run scripts/benchmark.py with ``args``; returns (stdout, JSON result, PNG path)."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    python = [sys.executable, "-c", _WITHOUT_TF] if without_tf else [sys.executable]
    proc = subprocess.run(
        [*python, os.path.join(ROOT, "scripts", "benchmark.py"), *args, "--quiet",
         "--json", str(out), "--plot", str(png)],
        # Two CPU devices whatever the cores: ensembles are also timed split over both.
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return proc.stdout, json.loads(out.read_text()), png


def test_loops_timed_in_turns_meet_the_same_drift():
    """Two identical loops on a machine that slows to a third of its speed half way
    through the measurement: timed in turns they measure alike. Catches timing them one
    after the other, which put the whole slowdown on the second (a 3x ratio)."""
    import time

    calls = [0]

    def call():  # one call per repeat (see target_seconds): calls 1-4 warm up, 5-16 are timed
        calls[0] += 1
        time.sleep(0.002 * (1 if calls[0] <= 10 else 3))
        return jnp.zeros(())

    a, b = timing.measure_side_by_side([paths.Loop(call, 1), paths.Loop(call, 1)], repeats=6,
                                       target_seconds=1e-9, warmup_calls=1)
    assert calls[0] == 16 and a["calls_per_repeat"] == b["calls_per_repeat"] == 1
    assert 0.75 < a["steps_per_s"]["median"] / b["steps_per_s"]["median"] < 1 / 0.75
    slow, fast = sorted(a["steps_per_s"]["values"])[0], sorted(a["steps_per_s"]["values"])[-1]
    assert fast / slow > 2  # the drift was there to meet


def test_quick_benchmark_writes_json_with_every_figure(tmp_path):
    stdout, r, _ = _benchmark(tmp_path, "--quick", "--repeats", "2")
    assert "fused / plain-JAX scan" in stdout  # the table was printed
    assert {"config", "environment", "matmul_ceiling", "device_peak", "rows", "configs",
            "ensembles", "ensemble_single", "ratios", "wall_seconds"} <= set(r)
    env = r["environment"]
    assert {"backend", "device_kind", "device_count", "versions"} <= set(env)
    assert "tensorflow" not in env["versions"] and env["versions"]["jax"] == jax.__version__
    assert {row["variant"] for row in r["rows"]} == set(paths.VARIANTS)
    for row in r["rows"]:
        assert row["steps_per_s"]["min"] <= row["steps_per_s"]["median"] <= row["steps_per_s"]["max"]
        assert len(row["steps_per_s"]["values"]) == 2
        assert {"examples_per_s", "achieved_flops_per_s", "vs_ceiling", "vs_peak"} <= set(row)
    (c,) = r["configs"]
    assert {"xla_flops_per_step", "analytic_flops", "compile_cold_s", "compile_warm_s",
            "program_bytes", "peak_device_bytes"} <= set(c)
    assert c["warm_cache_hits"] >= 1  # the warm compile came from the persistent cache
    mem = r["memory_ceiling"]
    assert mem["bytes"] == 2**24 and mem["bytes_per_s"] == max(mem["bytes_per_s_stats"]["values"]) > 0
    param_bytes = 4 * model.num_params(loop.init_state(jax.random.key(0), Config()).params)
    for kind in paths.KINDS:  # both kinds at every K, each against one model of the same run
        ens = [e for e in r["ensembles"] if e["kind"] == kind]
        assert [(e["k"], e["devices"]) for e in ens] == [(1, 1), (2, 1), (2, 2)]
        for e in [r["ensemble_single"], *ens]:
            k = e.get("k", 1)
            # A step reads and writes every member's parameters at least once each.
            assert e["xla_bytes_per_step"] >= 2 * k * param_bytes
            assert e["achieved_bytes_per_s"] == pytest.approx(
                e["xla_bytes_per_step"] * e["steps_per_s"]["median"])
            assert e["vs_memory_ceiling"] == pytest.approx(e["achieved_bytes_per_s"] / mem["bytes_per_s"])
        for e in ens:  # against the one model timed in turns with its K
            assert e["vs_single"] == pytest.approx(e["model_steps_per_s"] / e["single_model_steps_per_s"])
        assert ens[0]["single_model_steps_per_s"] == r["ensemble_single"]["model_steps_per_s"]
        assert ens[1]["single_model_steps_per_s"] == ens[2]["single_model_steps_per_s"]
    assert set(run.TARGETS) <= set(r["ratios"])
    assert r["ratios"]["fused_vs_plain_jax"]["value"] > 0


def _key_paths(obj, prefix=()) -> set:
    """Every key path through nested dicts (lists are leaves)."""
    if not isinstance(obj, dict):
        return set()
    return set().union(*({prefix + (k,)} | _key_paths(v, prefix + (k,)) for k, v in obj.items()))


def test_quick_accelerator_suite_writes_every_part_and_the_same_keys_when_skipped(tmp_path):
    """Parts (a)-(e) without TensorFlow or TFDS (the GPU machine has neither), then a budget
    too small for any of them: every part says what it skipped, under the same keys."""
    stdout, r, _ = _benchmark(tmp_path, "--suite", "accelerator", "--quick", without_tf=True)
    assert "(e) seeds as one ensemble" in stdout
    assert {"suite", "config", "environment", "matmul_ceiling", "device_peak", "paths", "batch_sweep",
            "ensembles", "data", "seed_schedule", "seed_ensemble", "targets", "wall_seconds"} <= set(r)
    assert {row["variant"] for row in r["paths"]["rows"]} == set(paths.VARIANTS)
    assert [row["batch_size"] for row in r["batch_sweep"]["rows"]] == [100, 100, 1000, 1000]
    assert [(e["k"], e["kind"], e["devices"]) for e in r["ensembles"]["rows"]] == [
        (k, kind, d) for k in (1, 8) for kind in paths.KINDS for d in ((1,) if k == 1 else (1, 2))]
    assert set(r["ensembles"]["best"]) == set(paths.KINDS)
    assert not (r["batch_sweep"]["skipped"] or r["ensembles"]["skipped"])
    d, e = r["seed_schedule"], r["seed_ensemble"]
    assert d["skipped"] is None and d["steps"] == 300 and d["models"] == 1
    assert 0.3 < d["final_test_accuracy"] <= 1.0  # learnable data: well above chance (0.1)
    assert e["skipped"] is None and e["models"] == 8 and len(e["final_test_accuracy"]) == 8
    acc = e["accuracy"]
    assert acc["min"] <= acc["percentiles"]["50"] <= acc["max"] and acc["std"] >= 0
    assert set(r["targets"]) == set(accelerator.TARGETS)
    _, skipped, _ = _benchmark(tmp_path, "--suite", "accelerator", "--quick", "--budget", "0.001")
    assert _key_paths(skipped) == _key_paths(r)
    assert skipped["paths"]["skipped"] == [100] and skipped["batch_sweep"]["skipped"] == [100, 1000]
    assert not skipped["ensembles"]["rows"] and len(skipped["ensembles"]["skipped"]) == 6
    assert skipped["seed_schedule"]["skipped"] and skipped["seed_ensemble"]["skipped"]


def test_suite_flags_are_checked(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "--suite", "accelerator", "--whole-run"],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 2 and "--whole-run not used by --suite accelerator" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None or not os.path.isdir(FASHION),
                    reason="needs TensorFlow and the Fashion-MNIST IDX files")
def test_whole_run_times_jaxmlp_and_the_2017_program_on_the_same_data(tmp_path):
    said = []
    r = processes.whole_run(dataset="fashion_mnist", manual_dir=FASHION,
                            data_dir=str(tmp_path / "tfds"), steps=200, repeats=2, log=said.append)
    # Cold once, then warm runs and the original alternating.
    order = [("cold" if "cold" in s else "warm") if "scripts/train.py" in s else "2017"
             for s in said if "scripts/train.py" in s or "2017" in s]
    assert order == ["cold", "warm", "2017", "warm", "2017"], said
    assert "error" not in r["prepare"] and r["prepare"]["source"] == "manual"
    cold, ours, original = r["jaxmlp_cold"], r["jaxmlp"], r["original"]
    assert not {"error"} & (set(cold) | set(ours) | set(original)), (cold, ours, original)
    assert cold["steps"] == ours["steps"] == original["steps"] == 200
    for run_ in (cold, ours):
        assert {"startup_seconds", "compile_seconds", "train_seconds", "eval_seconds",
                "process_seconds"} <= set(run_)
    assert original["data_source"] == "cache"  # the arrays jaxmlp prepared
    assert len(original["test_accuracy"]) == 3  # step 0, 100, 200
    for acc in (ours["final_test_accuracy"], original["final_test_accuracy"]):
        assert 0.5 < acc <= 1.0  # Fashion-MNIST after 200 steps: learning, whichever program
    for key, ran in (("original_vs_jaxmlp", ours), ("original_vs_jaxmlp_cold", cold)):
        assert r[key] == pytest.approx(original["process_seconds"] / ran["process_seconds"])
    # Two warm runs and two of the original, each reported by its slower (upper median) run.
    assert len(cold["process_seconds_runs"]) == 1
    for ran in (ours, original):
        assert len(ran["process_seconds_runs"]) == 2
        assert ran["process_seconds"] == max(ran["process_seconds_runs"])


def test_timed_repeats_run_with_the_gc_off_and_leave_it_as_it_was():
    """The timing rule in ``jaxmlp.bench.timing``'s docstring. Catches a collection left
    free to land inside a timed repeat, and a measurement that leaves the GC off."""
    import gc

    seen = []

    def call():
        seen.append(gc.isenabled())
        return jnp.zeros(())

    assert gc.isenabled()
    timing.measure(paths.Loop(call, 1), repeats=3, target_seconds=1e-9, warmup_calls=1)
    assert seen[:2] == [True, True] and seen[2:] == [False] * 3  # warm-up, then the repeats
    assert gc.isenabled()


def test_a_failing_child_is_reported_in_the_result_never_raised(tmp_path):
    """``jaxmlp.bench.processes``: a child that fails, or outlives its time, gives a result
    with its 'error' (the last line it printed), so one failure does not lose the rest of a
    benchmark."""
    from jaxmlp.bench import processes

    fails = [sys.executable, "-c", "import sys; print('error: no data here', file=sys.stderr); sys.exit(1)"]
    assert processes._child(fails, str(tmp_path / "none.json"), timeout_s=60) == \
        (None, {"error": "exit 1: error: no data here"})
    hangs = [sys.executable, "-c", "import time; time.sleep(30)"]
    assert processes._child(hangs, str(tmp_path / "none.json"), timeout_s=1) == \
        (None, {"error": "timed out after 1 s"})
    r = processes.measure_startup(dataset="fashion_mnist", manual_dir=str(tmp_path / "no-such-dir"))
    assert "error" in r and str(tmp_path / "no-such-dir") in r["error"]
