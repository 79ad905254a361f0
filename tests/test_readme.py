"""The README's code examples run as written, given arrays for the names they leave open."""

import re

import numpy as np

from conftest import ROOT, synthetic


def test_readme_python_examples_run_and_the_cnn_learns():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2, "the README's two code examples (the MLP, a user CNN) changed"
    data = synthetic()  # learnable digits: class c lights rows 2c..2c+1
    names = {"images_u8": data.train_images[:100], "labels": data.train_labels[:100],
             "test_images": data.test_images, "test_labels": data.test_labels}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), names)
    assert int(names["state"].step) == 1
    assert 0.0 <= float(names["test"]["accuracy"]) <= 1.0 and np.isfinite(float(names["test"]["loss"]))
    # The user-defined CNN trained with Adam through the same step: 30 updates on 100 images
    # generalise to the 303 test images (chance is 0.1).
    assert int(names["cnn"].step) == 30
    assert float(names["cnn_test"]["accuracy"]) >= 0.9, names["cnn_test"]


def test_readme_whole_run_figures_are_the_committed_benchmarks():
    """The README's whole-run row and its two ratios against the 2017 program are read from
    docs/benchmark-cpu.json, the benchmark committed with them. Catches a README left with
    an earlier call's figures after the JSON was rerun, or the other way round."""
    import json

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    whole = json.loads((ROOT / "docs" / "benchmark-cpu.json").read_text())["whole_run"]
    warm = re.search(r"takes \*\*([\d.]+)×\*\* jaxmlp's process time warm", text)
    cold = re.search(r"met\) and ([\d.]+)× cold", text)
    row = re.search(r"\| jaxmlp, warm compilation cache \| \*\*([\d.]+)\*\* \(([\d.]+)–([\d.]+)\)", text)
    assert warm and cold and row, "the README's whole-run sentence or table changed shape"
    assert float(warm.group(1)) == round(whole["original_vs_jaxmlp"], 2)
    assert float(cold.group(1)) == round(whole["original_vs_jaxmlp_cold"], 2)
    runs = whole["jaxmlp"]["process_seconds_runs"]
    assert [float(g) for g in row.groups()] == [round(v, 1) for v in
                                                (whole["jaxmlp"]["process_seconds"], min(runs), max(runs))]


_PATH_LABELS = {"fused": "fused scan, uint8 data (jaxmlp)", "fused_f32": "fused scan, float32 data",
                "fused_unroll": "fused, scan unrolled ×8", "fused_after": "fused, metrics after the update",
                "plain_jax": "plain-JAX scan", "device_step": "per-step, device data",
                "host_fed": "per-step, host-fed", "nnx_jit": "nnx.jit per-step"}


def _sections():
    """The README's CPU and GPU performance text, each with its committed benchmark."""
    import json

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    perf = text[text.index("## Performance"):]
    cpu, gpu = perf[:perf.index("**On a GPU**")], perf[perf.index("**On a GPU**"):]
    read = lambda name: json.loads((ROOT / "docs" / name).read_text())
    return cpu, read("benchmark-cpu.json"), gpu, read("benchmark-h200.json")


def _row(text: str, label: str) -> list[str]:
    """The cells after ``label`` in the markdown table row that starts with it."""
    found = re.findall(rf"^ *\| {re.escape(label)} \|(.*)\|$", text, re.M)
    assert len(found) == 1, f"no single table row {label!r}"
    return [c.strip().strip("*").replace(",", "") for c in found[0].split("|")]


def _has(text: str, pattern: str, *values) -> None:
    """``pattern`` (a regex with one group per value) reads ``values`` in ``text``."""
    m = re.search(pattern, text)
    assert m, f"the README no longer says {pattern!r}"
    assert list(m.groups()) == [str(v) for v in values], (pattern, m.groups(), values)


def test_readme_cpu_figures_are_the_committed_benchmark():
    """Every figure of the README's CPU tables and their bullets is read from
    docs/benchmark-cpu.json. Catches a table left with an earlier call's figures."""
    text, d, _, _ = _sections()
    rows = {(r["variant"], r["batch_size"]): r for r in d["rows"]}
    for variant, label in _PATH_LABELS.items():
        want = []
        for b in (100, 1000):
            r = rows[variant, b]
            want += [f"{r['steps_per_s']['median']:.0f}", f"{r['achieved_flops_per_s'] / 1e9:.0f}"]
        assert _row(text, label) == want, label
    ratio = {k: f"{v['value']:.2f}" for k, v in d["ratios"].items()}
    _has(text, r"fused / plain-JAX \*\*([\d.]+)\*\*", ratio["fused_vs_plain_jax"])
    _has(text, r"fused / nnx.jit \*\*([\d.]+)\*\*", ratio["fused_vs_nnx_jit"])
    _has(text, r"float32 / uint8 data ([\d.]+)", ratio["f32_vs_uint8"])
    _has(text, r"runs at ([\d.]+)× the training throughput", ratio["after_vs_before"])
    step_mm = {c["batch_size"]: c["step_matmuls"]["flops_per_s"] / 1e9 for c in d["configs"]}
    _has(text, r"matmul runs at (\d+) GFLOP/s and an elementwise pass over\s+256 MiB moves ([\d.]+) GB/s",
         f"{d['matmul_ceiling']['flops_per_s'] / 1e9:.0f}", f"{d['memory_ceiling']['bytes_per_s'] / 1e9:.1f}")
    _has(text, r"run at (\d+)\s+GFLOP/s \(batch 1,000\)", f"{step_mm[1000]:.0f}")
    _has(text, r"reaches (\d+) GFLOP/s, ([\d.]+) of the first and ([\d.]+) of\s+the second",
         f"{rows['fused', 1000]['achieved_flops_per_s'] / 1e9:.0f}", ratio["flops_vs_ceiling"],
         ratio["flops_vs_step_matmuls"])
    _has(text, r"own matmuls alone\s+run at (\d+) GFLOP/s and the fused step at (\d+)",
         f"{step_mm[100]:.0f}", f"{rows['fused', 100]['achieved_flops_per_s'] / 1e9:.0f}")

    ens = {(r["kind"], r["k"], r["devices"]): r for r in d["ensembles"]}
    _has(text, r"against one model timed in turns with them \(([\d,]+)\)",
         f"{ens['seeds', 8, 1]['single_model_steps_per_s']:,.0f}")
    for kind, label in (("seeds", "seeds"), ("learning_rates", "learning rates (each batch gathered once)")):
        cells = [re.match(r"[\d.]+", c).group() for c in _row(text, label)]
        assert cells == [f"{ens[kind, 8, n]['vs_single']:.2f}" for n in (1, 2)], label
    _has(text, r"already runs at ([\d.]+)× \(seeds\) and ([\d.]+)× \(learning rates\)",
         *(f"{ens[kind, 1, 1]['vs_single']:.2f}" for kind in ("seeds", "learning_rates")))
    use = sorted(r["vs_memory_ceiling"] for r in d["ensembles"] if r["k"] == 8)
    _has(text, r"The K = 8 steps use (\d+)–(\d+)%", *(f"{100 * v:.0f}" for v in (use[0], use[-1])))

    whole = d["whole_run"]
    for key, label in (("jaxmlp", "jaxmlp, warm compilation cache"), ("jaxmlp_cold", "jaxmlp, cold compilation cache")):
        w = whole[key]
        cells = _row(text, label)
        assert re.match(r"[\d.]+", cells[0]).group() == f"{w['process_seconds']:.1f}", label
        assert cells[1:5] == [f"{w[k]:.1f}" for k in ("startup_seconds", "compile_seconds",
                                                       "train_seconds")] + [f"{w['eval_seconds']:.2f}"], label
        assert cells[5:] == [f"{w['write_seconds']:.1f}", f"{w['final_test_accuracy']:.4f}"], label
    o = whole["original"]
    assert _row(text, "the 2017 program (`tf.compat.v1`)") == [
        f"{o['process_seconds']:.1f} ({min(o['process_seconds_runs']):.1f}–{max(o['process_seconds_runs']):.1f})",
        f"{o['import_seconds']:.1f} (import) + {o['data_seconds']:.1f} (data)", "",
        f"{o['train_seconds']:.1f}", f"{o['eval_seconds']:.1f}", "", f"{o['final_test_accuracy']:.4f}"]


def test_readme_gpu_table_is_the_committed_benchmark():
    """The README's H200 paths table and its two targets are read from docs/benchmark-h200.json."""
    _, _, text, d = _sections()
    rows = {r["variant"]: r for r in d["paths"]["rows"] if r["batch_size"] == 100}
    for variant, label in _PATH_LABELS.items():
        if variant != "fused_f32":  # not in the GPU table
            assert _row(text, label) == [f"{rows[variant]['steps_per_s']['median']:.0f}"], label
    _has(text, r"fused / host-fed per-step \*\*([\d.]+)×\*\*", f"{d['targets']['fused_vs_host_fed']['value']:.1f}")
    _has(text, r"model-steps/s, \*\*([\d.]+)×\*\* one model", f"{d['targets']['ensemble_vs_single']['value']:.1f}")
