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
