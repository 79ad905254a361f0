"""The configuration: the original's defaults and loud validation."""

import pytest

from jaxmlp.config import Config, ConfigError, resumed


def test_defaults_are_the_original_experiment():
    c = Config()
    assert c.hidden == (200, 100, 60, 30)
    assert (c.batch_size, c.steps, c.eval_every, c.log_every, c.seed) == (100, 10_000, 100, 1_000, 0)
    assert c.learning_rate * 1 / c.batch_size == pytest.approx(0.003)  # summed-loss lr of 2017
    assert c.init_stddev == 0.1 and c.dataset == "mnist"
    assert c.num_evals == 101 and c.members == ((0, None),) and not c.is_ensemble


@pytest.mark.parametrize("changes, fragment", [
    (dict(batch_size=0), "batch_size"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(steps=1000, eval_every=300), "must divide steps"),
    (dict(log_every=150), "multiple of eval_every"),
    (dict(dataset="cifar10"), "accepted: mnist, fashion_mnist, kmnist"),
    (dict(hidden=(200, 0)), "hidden"),
    (dict(seeds=(1, 1)), "repeat"),
    (dict(learning_rates=(0.1, 0.0)), "positive"),
])
def test_invalid_values_fail_with_one_line(changes, fragment):
    with pytest.raises(ConfigError) as e:
        Config(**changes)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_round_trips_through_a_dict_and_ensemble_members_are_a_product():
    c = Config(hidden=[64, 32], seeds=[0, 1], learning_rates=[0.1, 0.3])
    assert Config.from_dict(c.to_dict()) == c
    assert c.members == ((0, 0.1), (0, 0.3), (1, 0.1), (1, 0.3))
    assert c.member_names == ["seed 0, lr 0.1", "seed 0, lr 0.3", "seed 1, lr 0.1", "seed 1, lr 0.3"]
    assert Config(seeds=(2, 5)).member_names == ["seed 2", "seed 5"]
    assert Config(seeds=(2, 5)).members == ((2, None), (5, None))  # the optimizer's own rate
    with pytest.raises(ConfigError):
        Config.from_dict({**c.to_dict(), "momentum": 0.9})


def test_presets_are_the_ladder_and_overrides_win():
    from jaxmlp.config import GORNER_MNIST, PRESETS

    assert list(PRESETS) == ["softmax", "sigmoid", "relu", "relu-lrdecay", "relu-lrdecay-dropout"]
    assert set(GORNER_MNIST) == set(PRESETS)  # every rung has his figure beside it
    assert Config.from_preset("relu") == Config()  # the seed experiment is the default
    soft = Config.from_preset("softmax")
    assert soft.hidden == () and soft.init_stddev == 0.0 and soft.preset == "softmax"
    drop = Config.from_preset("relu-lrdecay-dropout", steps=200, eval_every=100, log_every=100)
    assert (drop.dropout, drop.bias_init, drop.optimizer) == (0.25, 0.1, "adam")
    assert (drop.learning_rate, drop.lr_decay_steps, drop.lr_min) == (0.003, 2000, 0.0001)
    assert drop.steps == 200 and drop.preset == "relu-lrdecay-dropout"
    with pytest.raises(ConfigError, match="unknown preset 'tanh'"):
        Config.from_preset("tanh")


@pytest.mark.parametrize("changes, fragment", [
    (dict(dropout=1.0), "dropout"),
    (dict(optimizer="rmsprop"), "accepted: sgd, adam"),
    (dict(train_metrics="during"), "accepted: before, after"),
    (dict(lr_decay_steps=100, lr_min=0.5, learning_rate=0.3), "must exceed lr_min"),
    (dict(lr_decay_steps=100, lr_min=0.01, learning_rates=(0.1, 0.005)), "must exceed lr_min"),
])
def test_invalid_ladder_values_fail_with_one_line(changes, fragment):
    with pytest.raises(ConfigError) as e:
        Config(**changes)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field, value", [("data_dir", "/elsewhere"), ("manual_dir", "/files"),
                                          ("log_every", 200), ("checkpoint_every", 500)])
def test_resume_may_change_where_the_data_lives_and_how_often_to_report_or_save(field, value):
    """The README's four flags. Catches one of them dropped from ``RESUMABLE`` (a user whose
    data moved could no longer resume)."""
    saved = Config(steps=1000, eval_every=100, log_every=100)
    assert getattr(resumed(saved, **{field: value}), field) == value


@pytest.mark.parametrize("field, value", [("steps", 2000), ("learning_rate", 0.1), ("seeds", (1, 2)),
                                          ("eval_batch_size", 100), ("batch_size", 50)])
def test_resume_refuses_what_defines_the_run(field, value):
    saved = Config(steps=1000, eval_every=100, log_every=100)
    with pytest.raises(ConfigError, match="drop --" + field.replace("_", "-")):
        resumed(saved, **{field: value})
    assert resumed(saved, **{field: getattr(saved, field)}) == saved  # the same value is fine


def test_config_imports_no_jax():
    import subprocess
    import sys
    code = "import sys, jaxmlp.config; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
