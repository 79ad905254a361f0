"""The two suites: contenders timed side by side in one call, repeats interleaved.

A contender is a function returning {'value': seconds or steps/s, ...}. Each repeat
calls every contender once, the order rotated by one per repeat, after a warm-up
call of each has compiled it; figures are medians, ratios are ratios of medians.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import data, idx, loop, model, records, run, train
from jaxmlp.bench import plain
from jaxmlp.config import Config

FASHION = "/usr/share/datasets/fashion-mnist"
KEYS = ("train_images", "train_labels", "test_images", "test_labels")

# name: (what, numerator, denominator, target, "max" or "min" (the side the target bounds), or None)
RATIOS = {
    "whole_run_vs_plain_jax": ("whole run, warm / plain-JAX program (time)", "whole_run", "plain_jax",
                               1.1, "max"),
    "fused_vs_plain_scan": ("fused / plain-JAX scan (steps/s)", "fused", "plain_scan", 0.95, "min"),
    "original_vs_whole_run": ("2017 program / whole run, warm (time)", "original", "whole_run", 2.5, "min"),
    "original_vs_whole_run_cold": ("2017 program / whole run, cold (time)", "original", "whole_run_cold",
                                   None, None),
    "fused_vs_host_fed": ("fused / host-fed (steps/s)", "fused", "host_fed", None, None),
}


# Data ---------------------------------------------------------------------------

def synthetic_arrays(seed: int = 0, num_train: int = 60_000, num_test: int = 10_000) -> dict:
    """MNIST-shaped uint8 images an MLP can learn: each class brightens its own random tenth
    of the pixels over uniform noise."""
    rng = np.random.default_rng(seed)
    lit = (rng.random((10, 28, 28)) < 0.1).astype(np.uint8)

    def split(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        return rng.integers(0, 160, (n, 28, 28), dtype=np.uint8) + lit[y] * np.uint8(95), y

    return dict(zip(KEYS, (*split(num_train), *split(num_test))))


def load_arrays(folder: str = FASHION, synthetic: bool = False) -> tuple[dict, str]:
    """({'train_images' (N, 28, 28) uint8, 'train_labels' (N,) int32, 'test_...'}, a description)."""
    if synthetic:
        return synthetic_arrays(), "synthetic (learnable, MNIST-shaped)"
    splits = idx.read_dir(folder)
    return dict(zip(KEYS, (*splits["train"], *splits["test"]))), f"Fashion-MNIST (IDX files in {folder})"


# Timing --------------------------------------------------------------------------

def interleaved(contenders: dict, repeats: int, log=lambda _: None) -> dict[str, list[dict]]:
    """{name: [run, ...]}: ``repeats`` calls of each; repeat r starts at the r-th contender."""
    names = list(contenders)
    runs = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            runs[n].append(contenders[n]())
            log(f"repeat {r + 1}/{repeats}: {n} {runs[n][-1]['value']:.4g}")
    return runs


def summarize(runs: list[dict], unit: str) -> dict:
    values = [r["value"] for r in runs]
    return {"unit": unit, "median": float(np.median(values)), "min": min(values),
            "max": max(values), "runs": runs}


def ratios(contenders: dict, spec: dict = RATIOS) -> dict:
    """Each ratio of ``spec`` whose two contenders were measured: median over median."""
    out = {}
    for name, (what, a, b, target, bound) in spec.items():
        if a in contenders and b in contenders:
            v = contenders[a]["median"] / contenders[b]["median"]
            met = None if target is None else bool(v <= target if bound == "max" else v >= target)
            out[name] = {"what": what, "value": v, "target": target, "bound": bound, "met": met}
    return out


def _environment() -> dict:
    return {**records.environment(), "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat()}


# Contenders ------------------------------------------------------------------------

def _throughput(fn, steps: int, models: int = 1):
    """A contender: steps/s (model-steps/s for ``models``) of ``fn() -> losses (..., steps)``."""
    def call():
        t = time.perf_counter()
        losses = jax.block_until_ready(fn())
        return {"value": models * steps / (time.perf_counter() - t),
                "final_loss": float(jnp.mean(losses[..., -(-steps // 10):]))}
    return call


def _fused(state, d, orders, steps: int, batch_size: int, models: int = 1):
    """Steps/s (model-steps/s for an ensemble) of one ``loop.fused_steps`` call."""
    return _throughput(lambda: loop.fused_steps(state, d, orders, num_steps=steps,
                                                batch_size=batch_size)[1]["loss"], steps, models)


def _host_fed(state, arrays: dict, batches: np.ndarray):
    """Steps/s of ``train.train_step`` called per step on batches gathered on the host;
    ``batches`` (S, B): the training examples of each step."""
    images, labels = arrays["train_images"], arrays["train_labels"]

    def call():
        s = jax.block_until_ready(jax.tree.map(jnp.copy, state))  # train_step donates its input
        losses = []
        t = time.perf_counter()
        for rows in batches:
            s, m = train.train_step(s, {"image": images[rows], "label": labels[rows]})
            losses.append(m["loss"])
        jax.block_until_ready(s)
        return {"value": len(batches) / (time.perf_counter() - t),
                "final_loss": float(np.mean(losses[-(-len(batches) // 10):]))}
    return call


def _device_data(arrays: dict) -> loop.Data:
    return loop.Data(*(jnp.asarray(arrays[k]) for k in KEYS))


def _single_state(arrays: dict, steps: int, batch_size: int, members=((0, None),)):
    """(state, orders, batches): jaxmlp's initial state for the seed run's MLP and SGD at 0.3,
    its data order, and for one model the batches (steps, batch_size) that order draws."""
    n = len(arrays["train_labels"])
    state, _, orders = loop.init_run(loop.mlp_init(Config()), [s for s, _ in members], num_steps=steps,
                                     eval_every=steps, num_examples=n, batch_size=batch_size,
                                     ensemble=len(members) > 1)
    per_epoch = n // batch_size
    batches = orders[:, :per_epoch * batch_size].reshape(-1, batch_size)[:steps] \
        if len(members) == 1 else None
    return state, orders, batches


def run_default(arrays: dict, source: str, *, steps: int = 10_000, repeats: int = 5,
                fused_steps: int = 1_000, log=lambda _: None) -> dict:
    """The seed run (``steps`` of batch 100, the test set every 100) four ways, and the fused
    training throughput (``fused_steps`` steps per call) three ways; see docs/performance.md."""
    config = Config(steps=steps)
    fused_steps = min(fused_steps, steps)
    dataset = data.Dataset(*(arrays[k] for k in KEYS), source=source)
    d = _device_data(arrays)
    state, orders, batches = _single_state(arrays, fused_steps, config.batch_size)
    params = model.layer_params(state.params)  # the plain-JAX scan starts where jaxmlp does
    with tempfile.TemporaryDirectory(prefix="jaxmlp-bench-") as tmp:
        npz = os.path.join(tmp, "arrays.npz")
        np.savez(npz, **arrays)  # the 2017 program's data: the same arrays

        def whole_run():
            out = tempfile.mkdtemp(dir=tmp)
            t = time.perf_counter()
            summary = run.train_and_evaluate(config, dataset=dataset, out_dir=out, quiet=True).summary
            seconds = time.perf_counter() - t
            shutil.rmtree(out)
            return {"value": seconds, "final_test_accuracy": float(summary["final_test_accuracy"]),
                    **{k: float(v) for k, v in summary["timings"].items()}}

        def plain_jax():
            t = time.perf_counter()
            _, h = jax.device_get(plain.program(jax.random.key(0), *(arrays[k] for k in KEYS),
                                                num_steps=steps))
            return {"value": time.perf_counter() - t,
                    "final_test_accuracy": float(h["test_accuracy"][-1])}

        contenders = {"whole_run": whole_run, "plain_jax": plain_jax,
                      "original": lambda: _original(npz, steps, tmp),
                      "fused": _fused(state, d, orders, fused_steps, config.batch_size),
                      "plain_scan": _throughput(lambda: plain.train(
                          params, d.train_images, d.train_labels, batches)[1], fused_steps),
                      "host_fed": _host_fed(state, arrays, np.asarray(batches))}
        log("warm-up: compiling every JAX contender (the first whole run is kept as 'cold')")
        cold = whole_run()
        for name in ("plain_jax", "fused", "plain_scan", "host_fed"):
            contenders[name]()
        runs = interleaved(contenders, repeats, log)
    units = {"fused": "steps/s", "plain_scan": "steps/s", "host_fed": "steps/s"}
    measured = {"whole_run_cold": summarize([cold], "s"),
                **{n: summarize(r, units.get(n, "s")) for n, r in runs.items()}}
    return {"suite": "default", "data": source, "environment": _environment(),
            "config": {"steps": steps, "batch_size": config.batch_size,
                       "eval_every": config.eval_every, "repeats": repeats,
                       "fused_steps": fused_steps},
            "contenders": measured, "ratios": ratios(measured)}


def _original(npz: str, steps: int, tmp: str) -> dict:
    """The 2017 program in a child process (TensorFlow never enters this one)."""
    out = os.path.join(tmp, "original.json")
    root = str(Path(__file__).resolve().parents[2])  # this jaxmlp, installed or not
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxmlp.bench.original", npz, "--steps", str(steps),
                           "--json", out], capture_output=True, text=True, env=env)
    process_seconds = time.perf_counter() - t
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"the 2017 program failed (exit {proc.returncode}): {lines[-1]}")
    with open(out) as f:
        r = json.load(f)
    return {"value": r["run_seconds"], "process_seconds": process_seconds,
            "final_test_accuracy": r["final_test_accuracy"], "tensorflow": r["tensorflow"]}


def run_accelerator(arrays: dict, source: str, *, steps: int = 500, repeats: int = 3,
                    batch_sizes=(100, 1_000, 10_000), ensemble_sizes=(16, 256, 1_024),
                    log=lambda _: None) -> dict:
    """Fused against host-fed steps/s per batch size, and model-steps/s of K seeds in one
    program at batch 100 against one model's (``fused_b100``: keep 100 in ``batch_sizes``);
    ``steps`` per call."""
    d = _device_data(arrays)
    contenders, spec = {}, {}
    for b in batch_sizes:
        state, orders, batches = _single_state(arrays, steps, b)
        contenders[f"fused_b{b}"] = _fused(state, d, orders, steps, b)
        contenders[f"host_fed_b{b}"] = _host_fed(state, arrays, np.asarray(batches))
        spec[f"fused_vs_host_fed_b{b}"] = (f"fused / host-fed, batch {b} (steps/s)",
                                           f"fused_b{b}", f"host_fed_b{b}", None, None)
    for k in ensemble_sizes:
        state, orders, _ = _single_state(arrays, steps, 100, tuple((s, None) for s in range(k)))
        contenders[f"ensemble_k{k}"] = _fused(state, d, orders, steps, 100, models=k)
        spec[f"ensemble_k{k}_vs_one"] = (f"{k} seeds / one model (model-steps/s)",
                                         f"ensemble_k{k}", "fused_b100", None, None)
    log("warm-up: compiling every contender")
    for call in contenders.values():
        call()
    runs = interleaved(contenders, repeats, log)
    measured = {n: summarize(r, "model-steps/s" if n.startswith("ensemble") else "steps/s")
                for n, r in runs.items()}
    return {"suite": "accelerator", "data": source, "environment": _environment(),
            "config": {"steps": steps, "repeats": repeats, "batch_sizes": list(batch_sizes),
                       "ensemble_sizes": list(ensemble_sizes)},
            "contenders": measured, "ratios": ratios(measured, spec)}
