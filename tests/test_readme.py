"""The README's Python examples run as written: the step example on arrays it leaves open,
and the whole-run CNN example exactly, in a fresh process (slow: it prepares Fashion-MNIST)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, child_env, synthetic

FASHION = "/usr/share/datasets/fashion-mnist"


def _blocks():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, "the README's two examples (the step, your own model) changed"
    return blocks


def test_the_step_example_runs_on_the_arrays_it_names():
    data = synthetic(100, 50)
    names = {"images": data.train_images, "labels": data.train_labels,
             "test_images": data.test_images, "test_labels": data.test_labels}
    exec(compile(_blocks()[0], "README.md", "exec"), names)
    assert int(names["state"].step) == 1 and set(names["metrics"]) == {"loss", "accuracy"}
    assert np.isfinite(float(names["test"]["loss"]))


def test_your_own_model_example_is_at_most_25_lines():
    assert len(_blocks()[1].strip().splitlines()) <= 25


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION), reason="apt-get install dataset-fashion-mnist")
def test_your_own_model_example_runs_exactly_and_learns(tmp_path):
    code = _blocks()[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=child_env(TFDS_DATA_DIR=str(tmp_path / "tfds")), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "cnn" / "summary.json").read_text())
    assert summary["steps"] == 1000 and [m["name"] for m in summary["members"]] == ["seed 0", "seed 1"]
    assert min(summary["final_test_accuracy"]) > 0.8  # Fashion-MNIST; chance is 0.1
    assert summary["data"]["class_names"][0] == "T-shirt/top"
    assert min(summary["final_test_top3"]) > min(summary["final_test_accuracy"])
