"""The benchmark measures like with like: same numbers from every path, sane FLOPs, full output.

No timing assertions: timings on a shared machine are noise.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmlp import bench, train
from jaxmlp.config import Config

SMALL = Config(hidden=(32, 16))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small():
    """(host arrays, device data, orders, state): 600 training examples, batch 50."""
    host, data = bench.synthetic_data(seed=1, num_train=600, num_test=100)
    orders = train.epoch_orders(jax.random.key(2), num_epochs=2, num_examples=600)
    return host, data, orders, train.init_state(jax.random.key(3), SMALL)


@pytest.mark.parametrize("f32", [False, True], ids=["uint8", "float32"])
def test_plain_jax_reference_equals_run_steps(small, f32):
    """Same init, data and sampling: the hand-written loop reproduces jaxmlp's losses and params."""
    _, data, orders, state = small
    data = bench.as_float32(data) if f32 else data
    carry = (bench.reference_params(state), jnp.zeros((), jnp.int32))
    (ref_params, ref_step), ref = bench.reference_run_steps(
        carry, data.train_images, data.train_labels, orders, train.learning_rate_of(state),
        num_steps=15, batch_size=50)  # crosses the epoch boundary (12 steps per epoch)
    ours, metrics = train.run_steps(bench.copy_tree(state), data, orders, num_steps=15, batch_size=50)
    np.testing.assert_allclose(ref["loss"], metrics["loss"], rtol=1e-5)
    np.testing.assert_array_equal(ref["accuracy"], metrics["accuracy"])
    assert int(ref_step) == int(ours.step) == 15
    for (w, b), (w2, b2) in zip(ref_params, bench.reference_params(ours)):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", bench.VARIANTS)
def test_every_timed_path_computes_the_same_losses(small, variant):
    """Each timed loop, started from the same state, sees the same batches and losses."""
    host, data, orders, state = small
    _, expected = train.run_steps(bench.copy_tree(state), data, orders, num_steps=6, batch_size=50)
    loop = bench.make_loop(variant, bench.copy_tree(state), host=host, data=data, orders=orders,
                           batch_size=50, scan_steps=3)
    losses = np.concatenate([np.atleast_1d(loop.call()["loss"])
                             for _ in range(6 // loop.steps_per_call)])
    np.testing.assert_allclose(losses, expected["loss"], rtol=1e-5)


def test_ensemble_loop_runs_k_independent_models(small):
    _, data, _, _ = small
    state, orders = bench.ensemble_inputs(3, SMALL, jax.random.key(0), num_examples=600)
    loop = bench.make_ensemble_loop(2, state, orders, data=data, batch_size=50, scan_steps=4)
    loss = loop.call()["loss"]
    assert loss.shape == (2, 4) and loop.models == 2
    assert not np.allclose(loss[0], loss[1])  # own init and data order per member


def test_flops_per_step_is_near_the_analytic_count(small):
    _, data, orders, _ = small
    hidden = bench.DEFAULT_HIDDEN
    state = train.init_state(jax.random.key(0), Config(hidden=hidden))
    info = bench.flops_per_step(state, data, orders, batch_size=100, scan_steps=4)
    analytic = bench.analytic_flops(hidden, 100)
    assert analytic["weights"] == 784 * 200 + 200 * 100 + 100 * 60 + 60 * 30 + 30 * 10
    if info["xla_flops_per_step"] is None:
        pytest.skip("this backend gives no cost analysis")
    assert 0.5 <= info["xla_flops_per_step"] / analytic["six_bw"] <= 2.0


def test_device_peak_table_matches_common_device_kinds():
    class Dev:
        def __init__(self, kind, platform="gpu"):
            self.device_kind, self.platform = kind, platform

    peak = lambda *args: bench.device_peak(Dev(*args))
    assert peak("NVIDIA H100 80GB HBM3")["name"] == "H100 SXM"
    assert peak("NVIDIA H100 PCIe")["name"] == "H100 PCIe"
    assert peak("NVIDIA A100-SXM4-40GB")["precision"] == "tf32"
    assert peak("NVIDIA L40S")["name"] == "L40S" and peak("NVIDIA L4")["name"] == "L4"
    assert peak("Tesla T4")["precision"] == "fp32"
    assert peak("TPU v5 lite", "tpu")["name"] == "TPU v5e"
    assert peak("TPU v5", "tpu")["name"] == "TPU v5p"
    assert peak("TPU v4", "tpu")["flops_per_s"] == 275e12
    assert peak("Some New Chip") is None and peak("cpu", "cpu") is None


def test_bad_config_is_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown variants"):
        bench.BenchConfig(variants=("fused", "nope"))
    with pytest.raises(ValueError, match="batch size"):
        bench.BenchConfig(batch_sizes=(0,))


def test_quick_benchmark_writes_json_with_every_figure(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--quick", "--repeats", "2",
         "--quiet", "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fused / plain-JAX scan" in proc.stdout  # the table was printed
    r = json.loads(out.read_text())
    assert png.stat().st_size > 0
    assert {"config", "environment", "matmul_ceiling", "device_peak", "rows", "configs",
            "ensembles", "ratios", "wall_seconds"} <= set(r)
    env = r["environment"]
    assert {"backend", "device_kind", "device_count", "versions"} <= set(env)
    assert "tensorflow" not in env["versions"] and env["versions"]["jax"] == jax.__version__
    assert {row["variant"] for row in r["rows"]} == set(bench.VARIANTS)
    for row in r["rows"]:
        assert row["steps_per_s"]["min"] <= row["steps_per_s"]["median"] <= row["steps_per_s"]["max"]
        assert len(row["steps_per_s"]["values"]) == 2
        assert {"examples_per_s", "achieved_flops_per_s", "vs_ceiling", "vs_peak"} <= set(row)
    (c,) = r["configs"]
    assert {"xla_flops_per_step", "analytic_flops", "compile_cold_s", "compile_warm_s",
            "program_bytes", "peak_device_bytes"} <= set(c)
    assert c["warm_cache_hits"] >= 1  # the warm compile came from the persistent cache
    assert [e["k"] for e in r["ensembles"]] == [1, 2]
    assert set(bench.TARGETS) <= set(r["ratios"])
    assert r["ratios"]["fused_vs_plain_jax"]["value"] > 0
