"""The benchmark measures like with like: the plain-JAX program computes jaxmlp's step,
repeats are interleaved, ratios are ratios of medians, the doc is rendered from the JSON.

No timing assertions: timings on a shared machine are noise.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, child_env

from jaxmlp import loop, model, train
from jaxmlp.bench import plain, report, suite
from jaxmlp.config import Config


def test_interleaved_rotates_the_order_and_runs_each_contender_every_repeat():
    calls = []
    contenders = {n: (lambda n=n: calls.append(n) or {"value": len(calls)}) for n in "abc"}
    runs = suite.interleaved(contenders, repeats=4)
    assert calls == list("abc" "bca" "cab" "abc")
    assert runs["b"] == [{"value": v} for v in (2, 4, 9, 11)]


def test_ratios_are_ratios_of_medians_judged_on_the_target_side():
    runs = lambda *v: [{"value": x} for x in v]  # noqa: E731
    measured = {"whole_run": suite.summarize(runs(12, 10, 30), "s"),  # median 12, not the mean
                "plain_jax": suite.summarize(runs(10, 11, 9), "s"),
                "original": suite.summarize(runs(30, 29, 31), "s"),
                "fused": suite.summarize(runs(1000, 900, 1100), "steps/s"),
                "plain_scan": suite.summarize(runs(1000, 1000, 1000), "steps/s")}
    assert measured["whole_run"] | {"runs": None} == {"unit": "s", "median": 12.0, "min": 10,
                                                       "max": 30, "runs": None}
    r = suite.ratios(measured)
    assert set(r) == {"whole_run_vs_plain_jax", "fused_vs_plain_scan", "original_vs_whole_run"}
    assert r["whole_run_vs_plain_jax"]["value"] == pytest.approx(1.2)
    assert r["whole_run_vs_plain_jax"]["met"] is False  # a time ratio: at most 1.1
    assert r["fused_vs_plain_scan"]["value"] == 1.0 and r["fused_vs_plain_scan"]["met"] is True
    assert r["original_vs_whole_run"]["value"] == pytest.approx(2.5) and r["original_vs_whole_run"]["met"]


def _default_result():
    s = lambda unit, v, **extra: {"unit": unit, "median": v, "min": v * 0.9, "max": v * 1.2,  # noqa: E731
                                  "runs": [{"value": v, **extra}]}
    parts = dict(startup_seconds=0.5, compile_seconds=0.01, train_seconds=9.5, write_seconds=1.25)
    contenders = {"whole_run_cold": s("s", 20.0, final_test_accuracy=0.8812, **parts),
                  "whole_run": s("s", 11.0, final_test_accuracy=0.8812, **parts),
                  "plain_jax": s("s", 10.0, final_test_accuracy=0.8799),
                  "original": s("s", 37.4, final_test_accuracy=0.8754, process_seconds=44.5,
                                tensorflow="2.21.0"),
                  "fused": s("steps/s", 1234.0, final_loss=0.3), "plain_scan": s("steps/s", 1200.0),
                  "host_fed": s("steps/s", 600.0)}
    env = {"backend": "cpu", "device_kind": "cpu", "cpu_count": 2, "date": "2026-01-01",
           "jax": "0.10.2", "python": "3.11"}
    return {"suite": "default", "data": "Fashion-MNIST", "environment": env, "contenders": contenders,
            "config": {"steps": 10_000, "batch_size": 100, "eval_every": 100, "repeats": 5,
                       "fused_steps": 1000},
            "ratios": suite.ratios(contenders)}


def test_render_markdown_shows_every_figure_of_the_result():
    text = report.render_markdown(_default_result(), sources=["docs/benchmark-cpu.json"])
    assert text.startswith("<!-- Rendered from docs/benchmark-cpu.json ")
    assert "| whole run, warm / plain-JAX program (time) | **1.10×** | ≤ 1.1× | yes |" in text
    assert "| fused / plain-JAX scan (steps/s) | **1.03×** | ≥ 0.95× | yes |" in text
    assert "| 2017 program / whole run, warm (time) | **3.40×** | ≥ 2.5× | yes |" in text
    assert "| 2017 program / whole run, cold (time) | **1.87×** |  |  |" in text
    assert "| fused / host-fed (steps/s) | **2.06×** |  |  |" in text
    assert "| 11.00 s (9.90–13.20) | 0.8812 |" in text and "1,234 steps/s (1,111–1,481)" in text
    assert "| 37.40 s (33.66–44.88) | 0.8754 |" in text
    assert "write_seconds" not in text and "writing records 1.25 s" in text
    assert "(TensorFlow 2.21.0: import, data, run): 44.5 s" in text
    result = _default_result()
    result["contenders"]["whole_run"]["median"] = 20.0
    result["ratios"] = suite.ratios(result["contenders"])
    assert "| **2.00×** | ≤ 1.1× | **no** |" in report.render_markdown(result)


def test_render_markdown_of_the_accelerator_suite():
    s = lambda v: {"unit": "steps/s", "median": v, "min": v, "max": v, "runs": []}  # noqa: E731
    cs = {"fused_b100": s(5000.0), "host_fed_b100": s(1000.0), "ensemble_k16": s(40_000.0)}
    spec = {"fused_vs_host_fed_b100": ("", "fused_b100", "host_fed_b100", None, None),
            "ensemble_k16_vs_one": ("", "ensemble_k16", "fused_b100", None, None)}
    result = {**_default_result(), "suite": "accelerator", "contenders": cs,
              "ratios": suite.ratios(cs, spec),
              "config": {"steps": 500, "repeats": 3, "batch_sizes": [100], "ensemble_sizes": [16]}}
    text = report.render_markdown(result)
    assert "| 100 | 5,000 steps/s (5,000–5,000) | 1,000 steps/s (1,000–1,000) | **5.00×** |" in text
    assert "| 16 | 40,000 steps/s (40,000–40,000) | **8.00×** |" in text
    assert "How it is measured" not in text  # the default suite's notes only with its table


@pytest.mark.slow
def test_plain_sgd_step_equals_train_step_from_the_same_parameters():
    state = jax.jit(loop.mlp_init(Config()))(jax.random.key(0))  # the seed run's MLP, SGD at 0.3
    params = model.layer_params(state.params)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    new, loss = jax.jit(plain.sgd_step)(params, images, labels)
    state, m = train.train_step(state, {"image": images, "label": labels})
    np.testing.assert_allclose(loss, m["loss"], rtol=1e-6)
    for (w, b), (w2, b2) in zip(new, model.layer_params(state.params)):
        np.testing.assert_allclose(w, w2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, b2, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # compiles a program and its reference: seconds
def test_plain_program_trains_and_scores_on_its_schedule():
    rng = np.random.default_rng(1)
    tr = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), rng.integers(0, 10, 40).astype(np.int32)
    te = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30).astype(np.int32)
    key = jax.random.key(3)
    params, h = plain.program(key, *tr, *te, num_steps=6, batch_size=10, eval_every=3)
    assert h["train_loss"].shape == (6,) and h["test_accuracy"].shape == h["test_loss"].shape == (3,)
    init_key, order_key = jax.random.split(key)
    p = plain.init_params(init_key)
    batches = plain.batch_indices(order_key, 6, 10, 40)
    assert sorted(np.asarray(batches[:4]).ravel().tolist()) == list(range(40))  # an epoch: each once
    losses, step, logits = [], jax.jit(plain.sgd_step), jax.jit(plain.logits)
    for t, idx in enumerate(np.asarray(batches)):
        if t % 3 == 0:  # scored at step 0 and after every 3 steps
            z = logits(p, te[0])
            np.testing.assert_allclose(h["test_loss"][t // 3], plain.cross_entropy(z, te[1]), rtol=1e-5)
            assert h["test_accuracy"][t // 3] == pytest.approx(float(jnp.mean(jnp.argmax(z, -1) == te[1])))
        p, loss = step(p, tr[0][idx], tr[1][idx])
        losses.append(loss)
    np.testing.assert_allclose(h["train_loss"], losses, rtol=1e-5)
    z = logits(params, te[0])
    np.testing.assert_allclose(h["test_loss"][-1], plain.cross_entropy(z, te[1]), rtol=1e-5)


def test_docs_performance_md_is_rendered_from_its_json():
    """Catches a hand-edited doc, or a JSON rerun without regenerating the doc."""
    doc = ROOT / "docs" / "performance.md"
    if not doc.exists():
        pytest.skip("docs/performance.md is written by the benchmark's final run")
    text = doc.read_text(encoding="utf-8")
    sources = re.match(r"<!-- Rendered from (.*?) by ", text).group(1).split()
    results = [json.loads((ROOT / s).read_text()) for s in sources]
    assert text == report.render_markdown(*results, sources=sources)


def _script():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_default_suite_end_to_end(tmp_path):
    """The script at 200 steps, 2 repeats: every contender, the 2017 program's child process
    too; the three seed runs reach the same accuracy, the three training paths the same loss."""
    out, md = tmp_path / "bench.json", tmp_path / "performance.md"
    synthetic = [] if os.path.isdir(suite.FASHION) else ["--synthetic"]
    assert _script().main(["--steps", "200", "--repeats", "2", "--json", str(out),
                           "--markdown", str(md), "--quiet", *synthetic]) == 0
    result = json.loads(out.read_text())
    cs = result["contenders"]
    assert set(cs) == {"whole_run_cold", "whole_run", "plain_jax", "original", "fused",
                       "plain_scan", "host_fed"}
    assert all(len(c["runs"]) == (1 if n == "whole_run_cold" else 2) for n, c in cs.items())
    assert result["config"] == {"steps": 200, "batch_size": 100, "eval_every": 100, "repeats": 2,
                                "fused_steps": 200}
    accuracy = [r["final_test_accuracy"] for n in ("whole_run", "plain_jax", "original")
                for r in cs[n]["runs"]]
    assert max(accuracy) - min(accuracy) < 0.03 and min(accuracy) > (0.6 if not synthetic else 0.9)
    losses = [r["final_loss"] for n in ("fused", "plain_scan", "host_fed") for r in cs[n]["runs"]]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-3)  # the same steps from the same state
    warm, cold = cs["whole_run"]["runs"][0], cs["whole_run_cold"]["runs"][0]
    assert {"startup_seconds", "compile_seconds", "train_seconds", "write_seconds"} <= set(warm)
    assert warm["compile_seconds"] < cold["compile_seconds"]  # warm: nothing compiled again
    assert set(result["ratios"]) == set(suite.RATIOS)
    assert md.read_text() == report.render_markdown(result, sources=[str(out)])
    rendered = tmp_path / "again.md"
    assert _script().main(["--render", str(out), "--markdown", str(rendered)]) == 0
    assert rendered.read_text() == md.read_text()


@pytest.mark.slow
def test_accelerator_suite_small():
    arrays = suite.synthetic_arrays(num_train=2_000, num_test=500)
    result = suite.run_accelerator(arrays, "synthetic", steps=20, repeats=2, batch_sizes=(100, 1000),
                                   ensemble_sizes=(3,))
    cs = result["contenders"]
    assert set(cs) == {"fused_b100", "host_fed_b100", "fused_b1000", "host_fed_b1000", "ensemble_k3"}
    for b in (100, 1000):  # the same 20 steps from the same state, fused or fed from the host
        np.testing.assert_allclose(cs[f"fused_b{b}"]["runs"][0]["final_loss"],
                                   cs[f"host_fed_b{b}"]["runs"][0]["final_loss"], rtol=1e-4)
    assert cs["ensemble_k3"]["unit"] == "model-steps/s"
    assert set(result["ratios"]) == {"fused_vs_host_fed_b100", "fused_vs_host_fed_b1000",
                                     "ensemble_k3_vs_one"}
    assert "| 3 | " in report.render_markdown(result)


@pytest.mark.slow
def test_the_2017_program_loads_no_jax_and_the_suite_no_tensorflow():
    code = ("import sys, jaxmlp.bench.original; assert 'jax' not in sys.modules, 'jax'; "
            "import jaxmlp.bench.suite, jaxmlp.bench.report; assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), cwd=ROOT)
