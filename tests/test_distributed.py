"""Many hosts: two CPU processes on localhost train data-parallel together
(jax.distributed, Gloo collectives) and match the single-process run."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, child_env

_WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if {num_processes} > 1:
        jax.distributed.initialize(coordinator_address={address!r}, num_processes={num_processes},
                                   process_id={process_id})
    sys.path.insert(0, {tests!r})
    from conftest import synthetic
    from jaxmlp import run
    from jaxmlp.config import Config
    assert jax.process_count() == {num_processes} and len(jax.devices()) == {num_processes}
    config = Config(hidden=(32, 16), batch_size=50, steps=60, eval_every=20, log_every=20)
    run.train_and_evaluate(config, dataset=synthetic(), out_dir={out!r}, quiet=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(out, process_id=0, num_processes=1, address=""):
    code = _WORKER.format(tests=str(ROOT / "tests"), out=out, process_id=process_id,
                          num_processes=num_processes, address=address)
    env = child_env(JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    pair = [_worker(str(tmp_path / "two"), i, 2, address) for i in range(2)]
    single = _worker(str(tmp_path / "one"))
    for p in (*pair, single):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    assert not os.path.exists(tmp_path / "two" / "checkpoints")  # no checkpoints across processes
    with np.load(tmp_path / "two" / "history.npz") as two, np.load(tmp_path / "one" / "history.npz") as one:
        for k in ("train_loss", "test_loss"):
            np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(two["test_accuracy"], one["test_accuracy"], atol=1 / 303 + 1e-6)
    summary = (tmp_path / "two" / "summary.json").read_text()
    assert '"num_devices": 2' in summary and '"mode": "data"' in summary
