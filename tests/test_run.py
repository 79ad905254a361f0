"""The whole run with your own model, loss, metrics and data: records, ensembles, a stop
and a bit-identical resume, and the checks at the boundary."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import synthetic
from flax import nnx

from jaxmlp import records, run, train
from jaxmlp.config import Config, ConfigError
from jaxmlp.data import Dataset
from jaxmlp.model import MLP
from jaxmlp.report import Reporter


class CNN(nnx.Module):
    """A user's own model: RGB 8x8 images, 5 classes, scales its own input."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.out = nnx.Linear(8 * 8 * 4, 5, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.conv(x.astype(jnp.float32) / 255))
        return self.out(x.reshape(x.shape[0], -1))


def smoothed(logits, labels):  # a loss of the user's own: label-smoothed cross-entropy
    target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(logits, target)


def top2(logits, labels):
    return jnp.any(jax.lax.top_k(logits, 2)[1] == labels[:, None], axis=1).astype(jnp.float32)


def cnn_init(key):
    tx = optax.adamw(optax.cosine_decay_schedule(3e-3, 80))
    return train.TrainState.create(CNN(nnx.Rngs(key)), tx, loss=smoothed, metrics={"top2": top2})


CLASSES = ("ant", "bee", "cat", "dog", "eel")
RGB = synthetic(400, 101, shape=(8, 8, 3), classes=5)._replace(class_names=CLASSES)
CNN_RUN = Config(batch_size=20, steps=80, eval_every=20, log_every=40, checkpoint_every=20, seeds=(0, 1))


class StopAt(Reporter):
    """Sends this process ``signum`` when the run reports ``step`` (``times`` in a row)."""

    def __init__(self, step, signum=signal.SIGINT, times=1):
        super().__init__(quiet=True)
        self.step, self.signum, self.times = step, signum, times

    def chunk(self, step, report):
        if step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def cnn_runs(tmp_path_factory):
    """An uninterrupted CNN ensemble, and the same run stopped by SIGINT at step 40 and resumed."""
    root = tmp_path_factory.mktemp("cnn")
    whole = run.train_and_evaluate(CNN_RUN, init=cnn_init, dataset=RGB, out_dir=root / "whole", quiet=True)
    with pytest.raises(run.Interrupted, match="interrupted at step 40") as e:
        run.train_and_evaluate(CNN_RUN, init=cnn_init, dataset=RGB, out_dir=root / "stopped",
                               reporter=StopAt(40))
    assert e.value.signum == signal.SIGINT
    stopped = records.read_json(root / "stopped" / records.SUMMARY)
    resumed = run.train_and_evaluate(CNN_RUN, init=cnn_init, dataset=RGB, out_dir=root / "stopped",
                                     resume=True, quiet=True)
    return root, whole, stopped, resumed


def test_a_users_cnn_ensemble_writes_every_record(cnn_runs):
    root, whole, _, _ = cnn_runs
    out = root / "whole"
    for name in (records.CONFIG, records.HISTORY, records.SUMMARY, records.CHECKPOINTS, *records.FIGURES):
        assert (out / name).exists(), name
    assert sorted(os.listdir(out / records.CHECKPOINTS), key=int) == ["40", "60", "80"]  # the last 3
    with np.load(out / records.HISTORY) as h:
        assert h["train_top2"].shape == (2, 80) and h["test_top2"].shape == (2, 5)
        assert np.all(h["test_top2"] >= h["test_accuracy"])
        np.testing.assert_array_equal(h["test_accuracy"], whole.history["test_accuracy"])
    s = json.loads((out / records.SUMMARY).read_text())
    assert s["status"] == "complete" and s["steps"] == 80
    assert [m["name"] for m in s["members"]] == ["seed 0", "seed 1"]
    assert s["data"]["class_names"] == list(CLASSES) and s["data"]["image_shape"] == [8, 8, 3]
    assert min(s["final_test_accuracy"]) > 0.6  # it learned (chance is 0.2)
    assert s["model"].startswith("init cnn_init")
    ev = train.evaluate(whole.state, jnp.asarray(RGB.test_images), jnp.asarray(RGB.test_labels))
    np.testing.assert_allclose(ev["top2"], whole.history["test_top2"][:, -1], rtol=1e-6)


def test_a_sigint_stop_and_resume_end_bit_identical_to_the_whole_run(cnn_runs):
    _, whole, stopped, resumed = cnn_runs
    assert stopped["status"] == "interrupted" and stopped["steps"] == 40
    assert resumed.summary["resumed_from_step"] == 40  # not a restart from step 0
    for k, v in whole.history.items():
        np.testing.assert_array_equal(resumed.history[k], v, err_msg=k)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
                for x in (a, b))
        np.testing.assert_array_equal(a, b)


def test_a_finished_run_is_not_rerun_and_a_used_folder_is_refused(cnn_runs, tmp_path):
    root = cnn_runs[0]
    with pytest.raises(run.AlreadyComplete):
        run.train_and_evaluate(CNN_RUN, init=cnn_init, dataset=RGB, out_dir=root / "whole", resume=True)
    with pytest.raises(records.RecordError, match="already holds a run; continue it with --resume"):
        run.train_and_evaluate(CNN_RUN, init=cnn_init, dataset=RGB, out_dir=root / "whole")


SMALL = Config(hidden=(16,), batch_size=50, steps=40, eval_every=20, log_every=20)


@pytest.mark.parametrize("dataset, config, init, message", [
    (synthetic(200, 50)._replace(train_labels=np.full(200, 10, np.int32)), SMALL, None,
     "train labels span 10..10, but the model gives 10 classes"),
    (RGB, SMALL, lambda k: train.TrainState.create(MLP((8,), rngs=nnx.Rngs(k)), optax.sgd(0.1)),
     "the model cannot take images of shape (8, 8, 3)"),
    (synthetic(200, 50, shape=(28, 28)), SMALL, cnn_init, "the model cannot take images of shape (28, 28)"),
    (Dataset(RGB.train_images, RGB.train_labels, RGB.test_images[:, :4], RGB.test_labels), SMALL,
     cnn_init, "train and test images disagree"),
    (RGB, SMALL.replace(learning_rates=(0.1, 0.2)), cnn_init, "inject_hyperparams"),
    (synthetic(30, 10), SMALL, None, "batch_size 50 exceeds the 30 training examples"),
    (Dataset(RGB.train_images, RGB.train_labels[:10], RGB.test_images, RGB.test_labels), SMALL,
     cnn_init, "one label per image"),
])
def test_bad_inputs_fail_in_one_line_before_anything_is_written(tmp_path, dataset, config, init, message):
    with pytest.raises(ConfigError) as e:
        run.train_and_evaluate(config, init=init, dataset=dataset, out_dir=tmp_path / "r")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not records.holds_a_run(tmp_path / "r")


def test_overwrite_replaces_a_run_only_once_the_new_one_has_started(tmp_path):
    ds = synthetic(300, 60)
    run.train_and_evaluate(SMALL.replace(checkpoint_every=20), dataset=ds, out_dir=tmp_path, quiet=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):  # a bad new run: the old one is as it was
        run.train_and_evaluate(SMALL.replace(batch_size=500), dataset=ds, out_dir=tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path / records.CHECKPOINTS), key=int) == ["20", "40"]
    run.train_and_evaluate(SMALL.replace(seed=1), dataset=ds, out_dir=tmp_path, overwrite=True, quiet=True)
    assert records.read_json(tmp_path / records.SUMMARY)["config"]["seed"] == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"  # the user's own file stays
    assert os.listdir(tmp_path / records.CHECKPOINTS) == ["40"]  # nothing of the old run's


def test_a_single_model_that_diverges_says_so_and_keeps_its_records(tmp_path):
    with pytest.raises(run.Diverged, match="non-finite at step 2; lower the learning rate") as e:
        run.train_and_evaluate(SMALL.replace(learning_rate=1e30), dataset=synthetic(300, 60),
                               out_dir=tmp_path, quiet=True)
    assert e.value.summary["status"] == "diverged"
    assert records.read_json(tmp_path / records.SUMMARY)["members"][0]["first_nonfinite_step"] == 2


def test_a_second_signal_stops_at_once_and_leaves_nothing_torn(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "SECOND_SIGNAL_AFTER", 0.0)
    with pytest.raises(run.StoppedAtOnce):
        run.train_and_evaluate(SMALL, dataset=synthetic(300, 60), out_dir=tmp_path,
                               reporter=StopAt(20, signal.SIGTERM, times=2))
    assert records.read_config(tmp_path)["steps"] == 40  # complete, readable
    assert not list(tmp_path.glob(".*.tmp*"))
    with pytest.raises(records.RecordError, match="holds no checkpoint"):
        run.train_and_evaluate(SMALL, dataset=synthetic(300, 60), out_dir=tmp_path, resume=True)


def test_without_a_folder_nothing_is_written_and_the_result_is_returned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run.train_and_evaluate(SMALL, dataset=synthetic(300, 60), quiet=True)
    assert os.listdir(tmp_path) == []
    assert result.history["test_accuracy"].shape == (3,) and result.summary["steps"] == 40


def test_a_corrupt_checkpoint_is_one_line_naming_the_one_before(tmp_path):
    """Orbax keeps no checksum of array data: the digest saved with each checkpoint must
    catch flipped bytes (or Orbax's own error must), in one line that says what to do."""
    config = SMALL.replace(checkpoint_every=20)
    ds = synthetic(300, 60)
    run.train_and_evaluate(config, dataset=ds, out_dir=tmp_path, quiet=True)
    (tmp_path / records.SUMMARY).unlink()  # as if stopped before its last records
    data_dir = tmp_path / records.CHECKPOINTS / "40" / "default" / "ocdbt.process_0" / "d"
    biggest = max(data_dir.iterdir(), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    with pytest.raises(records.RecordError) as e:
        run.train_and_evaluate(config, dataset=ds, out_dir=tmp_path, resume=True, quiet=True)
    message = str(e.value)
    assert "\n" not in message and "checkpoint at step 40" in message
    assert "to resume from the checkpoint at step 20" in message
