"""The README's code example runs as written (given arrays for the names it leaves open)."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README lost its code example"
    rng = np.random.default_rng(0)
    names = {
        "images_u8": rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        "labels": rng.integers(0, 10, 100).astype(np.int32),
        "test_images": rng.integers(0, 256, (250, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 250).astype(np.int32),
    }
    for block in blocks:
        exec(compile(block, "README.md", "exec"), names)
    assert int(names["state"].step) == 1
    assert 0.0 <= float(names["test"]["accuracy"]) <= 1.0 and np.isfinite(float(names["test"]["loss"]))
