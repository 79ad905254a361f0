"""Many devices: 8 CPU devices (XLA's host-platform device count) in a subprocess.

Data parallel (batch split, parameters replicated) and ensemble-parallel
(members split) runs must match the 1-device run; an unsplittable batch fails
before training.
"""

import json
import subprocess
import sys
import textwrap

from conftest import ROOT, child_env

from jaxmlp import parallel

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import synthetic
    from jaxmlp import parallel, run
    from jaxmlp.config import Config

    assert len(jax.devices()) == 8, jax.devices()
    data = synthetic()
    out = {{}}
    base = dict(hidden=(32, 16), batch_size=48, steps=60, eval_every=20, log_every=20)
    for name, extra in [("single", {{}}), ("ensemble", dict(seeds=tuple(range(8))))]:
        c = Config(**base, **extra)
        one = run.train_and_evaluate(c, dataset=data, quiet=True, devices=jax.devices()[:1]).history
        eight = run.train_and_evaluate(c, dataset=data, quiet=True, out_dir={out!r} + "/" + name).history
        out[name] = {{k: float(np.max(np.abs(one[k] - eight[k])))
                     for k in ("train_loss", "test_loss", "test_accuracy")}}
        out[name + "_mode"] = json.load(open({out!r} + "/" + name + "/summary.json"))["placement"]
    # An ensemble split over the devices stops at step 20, resumes from its checkpoint, and
    # ends bit-identical to the run never stopped.
    import signal
    from jaxmlp.report import Reporter

    class StopAt20(Reporter):
        def chunk(self, step, *args, **kwargs):
            if step == 20:
                signal.raise_signal(signal.SIGINT)

    c = Config(**base, seeds=tuple(range(8)), checkpoint_every=20)
    resumed_dir = {out!r} + "/resumed"
    try:
        run.train_and_evaluate(c, dataset=data, out_dir=resumed_dir, reporter=StopAt20(quiet=True))
    except run.Interrupted:
        pass
    resumed = run.train_and_evaluate(c, dataset=data, out_dir=resumed_dir, resume=True, quiet=True)
    whole = run.train_and_evaluate(c, dataset=data, quiet=True)
    out["resume"] = [resumed.summary["resumed_from_step"], resumed.summary["placement"]["num_devices"],
                     max(float(np.nanmax(np.abs(resumed.history[k] - whole.history[k])))
                         for k in ("train_loss", "test_loss", "test_accuracy"))]
    # Scored beside training: device 0 trains, device 1 scores (as scripts/train.py does on
    # CPU), bit-identical to scoring on the training device, also when the run stops at step
    # 20 (the chunk already training past it is dropped) and resumes.
    shardings = []
    compile_record = run.loop.compile_record
    def spy(lowered, platform):
        compiled = compile_record(lowered, platform)
        shardings.append(str(compiled.input_shardings))
        return compiled
    run.loop.compile_record = spy
    d0, d1 = jax.devices()[:2]
    c = Config(**base, checkpoint_every=20)
    alone = run.train_and_evaluate(c, dataset=data, quiet=True, devices=[d0])
    beside = run.train_and_evaluate(c, dataset=data, quiet=True, devices=[d0], eval_device=d1)
    beside_dir = {out!r} + "/beside"
    try:
        run.train_and_evaluate(c, dataset=data, out_dir=beside_dir, devices=[d0], eval_device=d1,
                               reporter=StopAt20(quiet=True))
    except run.Interrupted:
        pass
    stopped = sorted(n for n in os.listdir(beside_dir + "/checkpoints") if n.isdigit())
    again = run.train_and_evaluate(c, dataset=data, out_dir=beside_dir, resume=True, quiet=True,
                                   devices=[d0], eval_device=d1)
    diff = lambda a, b: max(float(np.nanmax(np.abs(a.history[k] - b.history[k])))
                            for k in ("train_loss", "test_loss", "test_accuracy"))
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(jax.device_get(a.state.params)), jax.tree.leaves(jax.device_get(b.state.params))))
    out["beside"] = dict(
        diff=diff(alone, beside), same_params=same(alone, beside), resumed_diff=diff(alone, again),
        resumed_same_params=same(alone, again), stopped_at=stopped,
        resumed_from=again.summary["resumed_from_step"], placement=beside.summary["placement"],
        alone_placement=alone.summary["placement"],
        scored_on=["id=1" in s for s in shardings],
        trained_on=sorted({{str(d) for x in jax.tree.leaves(beside.state) for d in x.devices()}}))
    run.loop.compile_record = compile_record
    try:
        run.train_and_evaluate(c, dataset=data, quiet=True, devices=jax.devices()[:2], eval_device=d1)
    except run.ConfigError as e:
        out["beside_error"] = str(e)
    # The benchmark's ensemble loop, split over 2 devices as a run would be.
    from jaxmlp.bench import paths
    ec = paths.ensemble_config("seeds", 4, Config(**base), num_examples=1000)
    bdata = run.loop.Data(*(jax.numpy.asarray(a) for a in (data.train_images, data.train_labels,
                                                           data.test_images, data.test_labels)))
    split = paths.make_ensemble_loop(ec, data=bdata, scan_steps=4, devices=jax.devices()[:2]).call()["loss"]
    alone = paths.make_ensemble_loop(ec, data=bdata, scan_steps=4).call()["loss"]
    out["bench_split"] = [len(split.sharding.device_set), float(np.max(np.abs(split - alone)))]
    try:
        parallel.plan(50, 1)
    except parallel.PlacementError as e:
        out["error"] = str(e)
    print("RESULT", json.dumps(out))
""")


def test_eight_devices_match_one(tmp_path):
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = _SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["single_mode"] == {"mode": "data", "num_devices": 8, "eval_beside": False}
    assert result["ensemble_mode"] == {"mode": "model", "num_devices": 8, "eval_beside": False}
    for name in ("single", "ensemble"):
        assert result[name]["train_loss"] < 1e-4, result
        assert result[name]["test_loss"] < 1e-4, result
        assert result[name]["test_accuracy"] <= 1 / 303 + 1e-6, result  # at most one image flips
    assert "batch size 50 cannot be split evenly over 8 devices" in result["error"]
    assert result["bench_split"][0] == 2 and result["bench_split"][1] < 1e-4, result
    assert result["resume"] == [20, 8, 0.0], result
    beside = result["beside"]
    assert beside["diff"] == 0.0 and beside["same_params"], beside
    assert beside["resumed_diff"] == 0.0 and beside["resumed_same_params"], beside
    assert beside["stopped_at"] == ["20"] and beside["resumed_from"] == 20, beside
    assert beside["placement"] == {"mode": "single", "num_devices": 1, "eval_beside": True}, beside
    assert beside["alone_placement"]["eval_beside"] is False, beside
    # Every scoring program ran on device 1 (alone: device 0); the model stayed on device 0.
    assert beside["scored_on"] == [False, True, True, True], beside
    assert beside["trained_on"] == ["cpu:0"], beside
    assert "needs a model that trains on one device" in result["beside_error"], result


def test_split_count_is_the_most_devices_that_divide_the_ensemble():
    assert [parallel.split_count(k, 2) for k in (1, 2, 3, 8)] == [1, 2, 1, 2]
    assert [parallel.split_count(k, 8) for k in (6, 12, 7, 64)] == [6, 6, 7, 8]


def test_cpu_layout_splits_an_ensemble_and_scores_anything_else_beside():
    assert parallel.cpu_layout(8, 2) == (2, False)  # members side by side, each scored where it trains
    assert parallel.cpu_layout(1, 2) == (2, True)  # one device trains, the other scores
    assert parallel.cpu_layout(3, 2) == (2, True)  # 3 members do not split over 2
    assert parallel.cpu_layout(1, 1) == (1, False)  # one core: nothing to score beside


_USE = textwrap.dedent("""
    import json, sys
    import jax
    from jaxmlp import parallel
    out = {"set": parallel.use_cpu_devices(int(sys.argv[1]))}
    out["devices"] = len(jax.devices("cpu"))
    out["after_start"] = parallel.use_cpu_devices(3)  # JAX has started: too late, nothing changes
    out["devices_after"] = len(jax.devices("cpu"))
    print("RESULT", json.dumps(out))
""")


def test_use_cpu_devices_acts_only_before_jax_starts_and_keeps_a_count_set_already():
    def fresh(n, **extra):
        env = {k: v for k, v in child_env(**extra).items() if k != "XLA_FLAGS" or "XLA_FLAGS" in extra}
        proc = subprocess.run([sys.executable, "-c", _USE, str(n)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.split("RESULT ", 1)[1])

    assert fresh(2) == {"set": 2, "devices": 2, "after_start": None, "devices_after": 2}
    assert fresh(1) == {"set": None, "devices": 1, "after_start": None, "devices_after": 1}
    assert fresh(2, XLA_FLAGS="--xla_force_host_platform_device_count=4") == {
        "set": None, "devices": 4, "after_start": None, "devices_after": 4}
