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
