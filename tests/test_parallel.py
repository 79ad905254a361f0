"""Many devices: 8 CPU devices (XLA's host-platform device count) in a subprocess.

Data parallel (batch split, parameters replicated) and ensemble-parallel (members
split) runs must match the 1-device run; a split ensemble stopped and resumed ends
bit-identical; an unsplittable batch fails before training.
"""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, child_env

_SCRIPT = textwrap.dedent("""
    import json, signal, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import synthetic
    from jaxmlp import parallel, run
    from jaxmlp.config import Config
    from jaxmlp.report import Reporter

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

    class StopAt20(Reporter):
        def chunk(self, step, report):
            if step == 20:
                signal.raise_signal(signal.SIGINT)

    c = Config(**base, seeds=tuple(range(8)), checkpoint_every=20)
    try:
        run.train_and_evaluate(c, dataset=data, out_dir={out!r} + "/resumed", reporter=StopAt20(quiet=True))
    except run.Interrupted:
        pass
    resumed = run.train_and_evaluate(c, dataset=data, out_dir={out!r} + "/resumed", resume=True, quiet=True)
    whole = run.train_and_evaluate(c, dataset=data, quiet=True)
    out["resume"] = [resumed.summary["resumed_from_step"], resumed.summary["placement"]["num_devices"],
                     all(np.array_equal(resumed.history[k], whole.history[k]) for k in whole.history)]
    try:
        parallel.plan(50, 1)
    except parallel.PlacementError as e:
        out["error"] = str(e)
    print("RESULT", json.dumps(out))
""")


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path):
    env = child_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    code = _SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["single_mode"] == {"mode": "data", "num_devices": 8}
    assert result["ensemble_mode"] == {"mode": "model", "num_devices": 8}
    for name in ("single", "ensemble"):
        assert result[name]["train_loss"] < 1e-4, result
        assert result[name]["test_loss"] < 1e-4, result
        assert result[name]["test_accuracy"] <= 1 / 303 + 1e-6, result  # at most one image flips
    assert "batch size 50 cannot be split evenly over 8 devices" in result["error"]
    assert result["resume"] == [20, 8, True], result
