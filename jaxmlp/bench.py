"""Benchmark jaxmlp's training paths against each other and against the hardware.

``run_benchmark(BenchConfig(...)) -> dict`` measures, in one process, on
synthetic data of MNIST's shape (60,000 / 10,000 uint8 images made on the fly):

=================  ============================================================
``host_fed``       per step: numpy batch sliced on the host, fed to ``train_step``
``device_step``    per step: ``run_steps(num_steps=1)`` on device-resident data
``fused``          ``run_steps`` with many steps per call (``lax.scan``), uint8 data
``fused_f32``      the same on pre-scaled float32 data (issue 2: which is faster?)
``plain_jax``      hand-written reference: (W, b) list, ``jax.grad``, manual SGD,
                   ``lax.scan`` with the same batch sampling -- no abstraction
``nnx_jit``        idiomatic per-step ``nnx.jit`` + ``nnx.Optimizer`` loop
=================  ============================================================

For each batch size (and width): steady-state steps/s over several repeats
(median, min/max, IQR), compile time cold and warm (JAX's persistent cache),
FLOPs per step from XLA's cost analysis, achieved FLOP/s, utilisation against
a matmul ceiling measured here and a published peak, and memory. Then
ensembles (model-steps/s against K) and the target ratios of issues 2 and 5.
``format_table``, ``write_json`` and ``plot`` present the result.

Timing rules: each path is warmed up (compile + one steady call) first, a
repeat is a run of calls ended by one ``jax.block_until_ready`` (calls chain
through the donated state, so the last output waits for all of them), and the
Python GC is off while timing. Per-step loops never sync the host per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmlp import model, records, train
from jaxmlp.config import Config

DEFAULT_HIDDEN = (200, 100, 60, 30)
VARIANTS = ("host_fed", "device_step", "fused", "fused_f32", "plain_jax", "nnx_jit")
LABELS = {
    "host_fed": "per-step, host-fed",
    "device_step": "per-step, device data",
    "fused": "fused scan (uint8)",
    "fused_f32": "fused scan (float32)",
    "plain_jax": "plain-JAX scan",
    "nnx_jit": "nnx.jit per-step",
}

# Published dense (no sparsity) peaks per chip, TFLOP/s, from the vendors' data
# sheets (GPUs: SXM/boost figures unless the name says PCIe). ``default`` is the
# precision XLA uses for a float32 matmul at JAX's default precision: TF32
# tensor cores on Ampere and newer GPUs, plain FP32 on older ones, one bf16 pass
# on TPUs. Utilisation is reported against that precision's peak.
PEAKS_TFLOPS = [
    # platform, substrings of device_kind (lower case), name, {precision: TFLOP/s}, default.
    # First match wins, so specific names come before the names they contain.
    ("gpu", ("h100 pcie",), "H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}, "tf32"),
    ("gpu", ("h100 nvl",), "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}, "tf32"),
    ("gpu", ("h100",), "H100 SXM", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}, "tf32"),
    ("gpu", ("h200",), "H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}, "tf32"),
    ("gpu", ("a100",), "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}, "tf32"),
    ("gpu", ("l40s",), "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.1}, "tf32"),
    ("gpu", ("l40",), "L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0}, "tf32"),
    ("gpu", ("l4",), "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}, "tf32"),
    ("gpu", ("v100",), "V100 SXM2", {"fp32": 15.7, "fp16": 125.0}, "fp32"),
    ("gpu", ("t4",), "T4", {"fp32": 8.1, "fp16": 65.0}, "fp32"),
    ("tpu", ("v6 lite", "v6e"), "TPU v6e", {"bf16": 918.0}, "bf16"),
    ("tpu", ("v5 lite", "v5e"), "TPU v5e", {"bf16": 197.0}, "bf16"),
    ("tpu", ("v5p", "v5"), "TPU v5p", {"bf16": 459.0}, "bf16"),
    ("tpu", ("v4",), "TPU v4", {"bf16": 275.0}, "bf16"),
]

# The ratios issues 2 and 5 set targets for: key -> (what, target, backends it applies to).
TARGETS = {
    "fused_vs_plain_jax": ("fused / plain-JAX scan, batch 100", 0.95, ("cpu", "gpu", "tpu")),
    "fused_vs_nnx_jit": ("fused / nnx.jit per-step, batch 100", 1.5, ("cpu",)),
    "fused_vs_host_fed": ("fused / host-fed per-step, batch 100", 10.0, ("gpu",)),
    "ensemble_vs_single": ("ensemble K=64 / K=1 model-steps/s, batch 100", 20.0, ("gpu",)),
    "flops_vs_ceiling": ("fused FLOP/s / matmul ceiling, batch 1000", 0.9, ("cpu",)),
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure and how long. ``BenchConfig.quick()`` is CI-sized."""

    batch_sizes: tuple[int, ...] = (100, 1_000, 10_000)
    hidden: tuple[tuple[int, ...], ...] = (DEFAULT_HIDDEN,)  # widths to sweep; ratios use the first
    variants: tuple[str, ...] = VARIANTS
    ensemble_sizes: tuple[int, ...] | None = None  # None: (1, 4) on CPU, (1, 4, 16, 64) elsewhere
    ensemble_batch_size: int = 100
    learning_rate: float = 0.3
    repeats: int = 5  # timed repeats per path; median and spread over these
    target_seconds: float = 0.5  # each repeat runs about this long
    warmup_calls: int = 2  # untimed calls first: compile, then one steady call
    scan_examples: int = 100_000  # a fused call covers about this many examples ...
    min_scan_steps: int = 10  # ... within these bounds on its step count
    max_scan_steps: int = 1_000
    matmul_size: int | None = None  # n of the n x n f32 ceiling matmul (None: 2048 CPU, 8192 else)
    compile_times: bool = True  # cold/warm compile with the persistent cache
    num_train: int = 60_000
    num_test: int = 10_000
    seed: int = 0
    startup: bool = False  # also time scripts/train.py to its first step, cold and warm
    startup_dataset: str = "fashion_mnist"
    startup_manual_dir: str = "/usr/share/datasets/fashion-mnist"
    startup_steps: int = 100

    def __post_init__(self):
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        for b in (*self.batch_sizes, self.ensemble_batch_size):
            if not 0 < b <= self.num_train:
                raise ValueError(f"batch size {b} must be in [1, {self.num_train}]")
        if self.repeats < 1 or self.warmup_calls < 1 or self.target_seconds <= 0:
            raise ValueError("repeats and warmup_calls must be >= 1, target_seconds > 0")
        if any(k < 1 for k in self.ensemble_sizes or ()):
            raise ValueError(f"ensemble sizes must be >= 1, got {self.ensemble_sizes}")

    @classmethod
    def quick(cls, **changes) -> "BenchConfig":
        """Seconds, not minutes: one batch size, short scans, few repeats."""
        base = dict(batch_sizes=(100,), ensemble_sizes=(1, 2), repeats=3, target_seconds=0.05,
                    warmup_calls=1, scan_examples=2_000, min_scan_steps=5, max_scan_steps=50,
                    matmul_size=1024, startup_steps=10)
        return cls(**{**base, **changes})

    def scan_steps(self, batch_size: int, models: int = 1) -> int:
        """Steps per fused call: enough to amortise dispatch, bounded so a call stays short."""
        steps = self.scan_examples // (batch_size * models)
        return max(self.min_scan_steps, min(self.max_scan_steps, steps))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- data ---------------------------------------------------------------------


def synthetic_data(seed: int = 0, num_train: int = 60_000, num_test: int = 10_000):
    """Random uint8 images and labels of MNIST's shape: (host arrays dict, ``train.Data``).

    Random content is fine for timing: the work per step does not depend on it.
    """
    rng = np.random.default_rng(seed)
    host = {
        "train_images": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, num_train).astype(np.int32),
        "test_images": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, num_test).astype(np.int32),
    }
    return host, train.Data(**{k: jnp.asarray(v) for k, v in host.items()})


def as_float32(data: train.Data) -> train.Data:
    """The same data pre-scaled to float32 in [0, 1] (4x the memory, no scaling in the step)."""
    scale = lambda x: (x.astype(jnp.float32) / 255.0) if x.dtype == jnp.uint8 else x
    return data._replace(train_images=scale(data.train_images), test_images=scale(data.test_images))


# --- the plain-JAX reference -------------------------------------------------------


def reference_params(state: train.TrainState) -> list[tuple[jax.Array, jax.Array]]:
    """A jaxmlp state's parameters as the reference's [(W (in, out), b (out,)), ...] (copies)."""
    return [(jnp.array(w), jnp.array(b)) for w, b in model.layer_params(state.params)]


def _reference_loss(params, images, labels):
    x = images.reshape(images.shape[0], -1)
    x = x.astype(jnp.float32) * (1.0 / 255.0) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    logits = x @ params[-1][0] + params[-1][1]
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1)), logits


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"), donate_argnums=0)
def reference_run_steps(carry, images, labels, orders, learning_rate, *, num_steps: int,
                        batch_size: int):
    """The whole fused loop in plain JAX: carry = (params list, step () int32).

    images (N, 28, 28), labels (N,), orders (E, N) int32: the same sampling as
    ``train.batch_at``. Returns (carry, {'loss', 'accuracy'} stacked (num_steps,)).
    """
    steps_per_epoch = images.shape[0] // batch_size

    def body(carry, _):
        params, step = carry
        start = (step // steps_per_epoch, (step % steps_per_epoch) * batch_size)
        idx = jax.lax.dynamic_slice(orders, start, (1, batch_size))[0]
        x, y = images[idx], labels[idx]
        (loss, logits), grads = jax.value_and_grad(_reference_loss, has_aux=True)(params, x, y)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return (params, step + 1), {"loss": loss, "accuracy": accuracy}

    return jax.lax.scan(body, carry, length=num_steps)


# --- the paths being timed: each is a zero-argument call that advances its own state ---


@dataclasses.dataclass
class Loop:
    call: Callable[[], Any]  # one call; returns arrays that are ready when the call is done
    steps_per_call: int
    models: int = 1


def _boxed(state, fn):
    """A call that threads a donated state through ``fn(state) -> (state, out)``."""
    box = [state]

    def call():
        box[0], out = fn(box[0])
        return out

    return call


def copy_tree(tree):
    """Fresh buffers for every leaf: each loop donates its own state, not a shared one."""
    return jax.tree.map(jnp.copy, tree)


def make_loop(variant: str, state: train.TrainState, *, host: dict, data: train.Data,
              orders: jax.Array, batch_size: int, scan_steps: int) -> Loop:
    """The timed loop of ``variant`` (one of ``VARIANTS``), starting from ``state`` (consumed)."""
    if variant == "host_fed":
        images, labels, order_rows = host["train_images"], host["train_labels"], np.asarray(orders)
        per_epoch, step = host["train_images"].shape[0] // batch_size, [0]

        def host_step(state):
            epoch, i = divmod(step[0], per_epoch)
            idx = order_rows[min(epoch, len(order_rows) - 1), i * batch_size:(i + 1) * batch_size]
            step[0] += 1
            # numpy in, so every call pays the host gather and the host->device copy.
            return train.train_step(state, {"image": images[idx], "label": labels[idx]})

        return Loop(_boxed(state, host_step), 1)
    if variant in ("device_step", "fused", "fused_f32"):
        steps = 1 if variant == "device_step" else scan_steps
        d = as_float32(data) if variant == "fused_f32" else data
        return Loop(_boxed(state, lambda s: train.run_steps(s, d, orders, num_steps=steps,
                                                            batch_size=batch_size)), steps)
    if variant == "plain_jax":
        carry = (reference_params(state), jnp.zeros((), jnp.int32))
        lr = train.learning_rate_of(state)
        return Loop(_boxed(carry, lambda c: reference_run_steps(
            c, data.train_images, data.train_labels, orders, lr,
            num_steps=scan_steps, batch_size=batch_size)), scan_steps)
    if variant == "nnx_jit":
        return Loop(_nnx_call(state, data, orders, batch_size), 1)
    raise ValueError(f"unknown variant {variant!r}")


def _nnx_call(state: train.TrainState, data: train.Data, orders: jax.Array, batch_size: int):
    """The loop Flax's NNX examples teach: a stateful module and optimizer under ``nnx.jit``.

    Same model, parameters, loss and device-resident batch sampling as jaxmlp;
    what differs is NNX's per-call graph handling and no donation.
    """
    mlp = nnx.merge(state.graphdef, state.params)  # an ordinary stateful nnx.Module
    optimizer = nnx.Optimizer(mlp, optax.sgd(float(train.learning_rate_of(state))), wrt=nnx.Param)

    @nnx.jit
    def step(mlp, optimizer, data, orders):
        batch = train.batch_at(data, orders, optimizer.step[...].astype(jnp.int32), batch_size)

        def loss_fn(mlp):
            logits = mlp(model.to_inputs(batch["image"]))
            return train.cross_entropy(logits, batch["label"]).mean(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(mlp)
        optimizer.update(mlp, grads)
        return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    return lambda: step(mlp, optimizer, data, orders)


def ensemble_inputs(k: int, config: Config, key: jax.Array, *, num_examples: int, num_epochs: int = 2):
    """(state, orders) of K models, each with its own init and data order; slice ``[:k]`` for fewer.

    Built once for the largest K and sliced: eager initialisation compiles many
    small ops per shape, which would otherwise dominate a short benchmark.
    """
    init_keys, order_keys = jax.random.split(key, (2, k))
    # Stacked single inits equal train.init_ensemble's state (the same per-member
    # init_state under vmap) but reuse the single model's compiled init ops.
    members = [train.init_state(kk, config) for kk in init_keys]
    state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    orders = jax.vmap(lambda kk: train.epoch_orders(kk, num_epochs=num_epochs,
                                                    num_examples=num_examples))(order_keys)
    return state, orders


def make_ensemble_loop(k: int, state: train.TrainState, orders: jax.Array, *, data: train.Data,
                       batch_size: int, scan_steps: int) -> Loop:
    """The first ``k`` models of ``ensemble_inputs``'s (state, orders) in one fused call."""
    state, orders = jax.tree.map(lambda x: x[:k], (state, orders))  # fresh buffers: donatable
    return Loop(_boxed(state, lambda s: train.ensemble_run_steps(
        s, data, orders, num_steps=scan_steps, batch_size=batch_size)), scan_steps, models=k)


# --- timing -------------------------------------------------------------------------


def stats(values) -> dict:
    """median, min, max, quartiles and all values of a list of rates."""
    v = np.asarray(values, float)
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()),
            "q25": float(q25), "q75": float(q75), "values": v.tolist()}


def measure(loop: Loop, *, repeats: int, target_seconds: float, warmup_calls: int) -> dict:
    """Steady-state steps/s of ``loop``: warm-up excluded, ``repeats`` timed runs of calls."""
    for _ in range(warmup_calls):
        jax.block_until_ready(loop.call())
    t0 = time.perf_counter()
    jax.block_until_ready(loop.call())
    calls = max(1, math.ceil(target_seconds / max(time.perf_counter() - t0, 1e-9)))
    rates = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection mid-repeat is noise, not the path's cost
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                out = loop.call()
            jax.block_until_ready(out)  # calls chain through the state: this waits for all
            rates.append(calls * loop.steps_per_call / (time.perf_counter() - t0))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"steps_per_s": stats(rates), "calls_per_repeat": calls,
            "steps_per_call": loop.steps_per_call}


def matmul_ceiling(n: int, *, repeats: int = 5, target_seconds: float = 0.5, chain: int = 4) -> dict:
    """Best FLOP/s of a chain of large n x n float32 matmuls at default precision.

    The best repeat is the ceiling. Chaining (x <- x @ w) keeps the calls
    ordered so one final block waits for all; w ~ N(0, 1/n) keeps x bounded.
    """
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, n), jnp.float32)
    w = jax.random.normal(kw, (n, n), jnp.float32) / math.sqrt(n)
    f = jax.jit(lambda x, w: jax.lax.fori_loop(0, chain, lambda _, x: x @ w, x))
    box = [x]

    def call():
        box[0] = f(box[0], w)
        return box[0]

    m = measure(Loop(call, chain), repeats=repeats, target_seconds=target_seconds, warmup_calls=1)
    flops = 2.0 * n ** 3
    rates = [r * flops for r in m["steps_per_s"]["values"]]
    return {"n": n, "dtype": "float32", "precision": "default", "flops_per_s": max(rates),
            "flops_per_s_stats": stats(rates)}


def step_matmul_rate(hidden, batch_size: int, *, repeats: int = 5, target_seconds: float = 0.5) -> dict:
    """FLOP/s of exactly the matmuls of one step, alone: for each layer the forward
    (B, in) @ (in, out), the weight gradient contracted over B, and (all but the first
    layer) the input gradient. A ceiling at this network's own shapes, which small
    matmuls reach less well than ``matmul_ceiling``'s large square one."""
    widths = (model.NUM_INPUTS, *hidden, model.NUM_CLASSES)
    keys = iter(jax.random.split(jax.random.key(1), 3 * len(widths)))
    layers = [(jax.random.normal(next(keys), (batch_size, a)), jax.random.normal(next(keys), (a, b)),
               jax.random.normal(next(keys), (batch_size, b))) for a, b in zip(widths[:-1], widths[1:])]

    @jax.jit
    def matmuls(layers):
        out = []
        for i, (x, w, g) in enumerate(layers):
            out.append(x @ w)  # forward
            out.append(jax.lax.dot_general(x, g, (((0,), (0,)), ((), ()))))  # dL/dW = x^T g
            if i:
                out.append(g @ w.T)  # dL/dx, not needed for the images
        return out

    m = measure(Loop(lambda: matmuls(layers), 1), repeats=repeats, target_seconds=target_seconds,
                warmup_calls=1)
    flops = analytic_flops(hidden, batch_size)["matmul"]
    return {"flops": flops, "flops_per_s": flops * m["steps_per_s"]["median"],
            "flops_per_s_stats": stats([flops * r for r in m["steps_per_s"]["values"]])}


# --- compile time, FLOPs and memory ----------------------------------------------------


@contextlib.contextmanager
def persistent_cache(path: str):
    """Use JAX's persistent compilation cache in ``path`` (every entry kept), then restore.

    The cache object is built once per process from the configured dir, so it is
    reset on the way in and out.
    """
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {name: getattr(jax.config, name) for name in names}
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:
        yield
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
        cc.reset_cache()


def compile_seconds(lower: Callable[[], Any], cache_dir: str) -> dict:
    """Trace + lower + compile of ``lower()`` cold (empty persistent cache) and warm (hit).

    ``jax.clear_caches()`` before each drops the in-memory caches, so the warm
    compile is what a fresh process with a warm cache pays. ``warm_cache_hits``
    counts JAX's cache-hit events during the warm one (0 means it did not hit).
    """
    hits = []
    listener = lambda event, **kw: hits.append(1) if event.endswith("/cache_hits") else None
    times = {}
    with persistent_cache(cache_dir):
        for which in ("cold", "warm"):
            jax.clear_caches()
            if which == "warm":
                jax.monitoring.register_event_listener(listener)
            t0 = time.perf_counter()
            try:
                lower().compile()
            finally:
                times[which] = time.perf_counter() - t0
                if which == "warm":
                    jax.monitoring.unregister_event_listener(listener)
    return {"compile_cold_s": times["cold"], "compile_warm_s": times["warm"],
            "warm_cache_hits": len(hits)}


def xla_flops(compiled) -> float | None:
    """'flops' of XLA's cost analysis of a compiled program (None where unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # NotImplementedError on some backends; the format is not a contract
        return None
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops is not None and flops > 0 else None


def program_bytes(compiled) -> int | None:
    """Device bytes a compiled program needs: arguments + outputs + temporaries - aliased."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:
        return None


def peak_device_bytes(device=None) -> int | None:
    """The process's peak device memory so far where the backend reports it (not on CPU)."""
    device = device or jax.local_devices()[0]
    try:
        s = device.memory_stats()
    except Exception:
        return None
    return int(s["peak_bytes_in_use"]) if s and "peak_bytes_in_use" in s else None


def analytic_flops(hidden, batch_size: int) -> dict:
    """Matmul FLOPs of one SGD step: forward 2BW, weight gradients 2BW, input gradients
    2B(W - 784*h0) (none for the images). ``six_bw`` is the usual 6*B*W rule of thumb."""
    widths = (model.NUM_INPUTS, *hidden, model.NUM_CLASSES)
    w = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    exact = 2 * batch_size * w * 2 + 2 * batch_size * (w - widths[0] * widths[1])
    return {"weights": w, "six_bw": 6 * batch_size * w, "matmul": exact}


def flops_per_step(state, data, orders, *, batch_size: int, scan_steps: int) -> dict:
    """FLOPs of one step from XLA's cost analysis, and whether a scan's figure scales with length.

    XLA's HLO cost analysis may count a while loop's body once whatever its
    trip count (it does on CPU with jaxlib 0.10), so dividing a scan's figure by
    its length can undercount by that length. The one-step program
    (``run_steps(num_steps=1)``) has no such ambiguity and is the figure used.
    """
    lower = lambda n: train.run_steps.lower(state, data, orders, num_steps=n, batch_size=batch_size)
    one = lower(1).compile()
    scan = lower(scan_steps).compile()
    f1, fs = xla_flops(one), xla_flops(scan)
    scales = None if f1 is None or fs is None else bool(abs(fs - scan_steps * f1) < 0.1 * scan_steps * f1)
    return {"xla_flops_per_step": f1, "xla_flops_scan": fs, "scan_steps": scan_steps,
            "scan_cost_counts_every_step": scales, "program_bytes": program_bytes(scan)}


def device_peak(device=None) -> dict | None:
    """The published peak for this device at its default f32-matmul precision (None if unknown)."""
    device = device or jax.local_devices()[0]
    kind = device.device_kind.lower()
    for platform_, needles, name, peaks, default in PEAKS_TFLOPS:
        if device.platform == platform_ and any(n in kind for n in needles):
            return {"name": name, "precision": default, "flops_per_s": peaks[default] * 1e12,
                    "fp32_flops_per_s": peaks["fp32"] * 1e12 if "fp32" in peaks else None,
                    "tflops": peaks}
    return None


# --- time to first step of scripts/train.py --------------------------------------------


def measure_startup(*, dataset: str, manual_dir: str, steps: int = 100, timeout_s: float = 900) -> dict:
    """Seconds from process start to the first training step of ``scripts/train.py``.

    Two runs against one fresh TFDS data dir and compilation cache: cold (TFDS
    prepares ``dataset`` from the IDX files in ``manual_dir``, decodes, and XLA
    compiles) and warm (decoded-array cache and persistent compilation cache).
    The run's ``summary.json`` gives ``timings.startup_seconds`` (process start
    to data loaded) and ``compile_seconds``; the first step starts after both.
    Run this before the parent process touches an accelerator, which a child
    could not share. Failures are reported in the result, never raised.
    """
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "scripts", "train.py")
    result = {"dataset": dataset, "manual_dir": manual_dir, "steps": steps}
    if not os.path.isfile(script):
        return {**result, "error": f"{script} not found (needs a source checkout)"}
    if not os.path.isdir(manual_dir):
        return {**result, "error": f"manual dir {manual_dir} not found"}
    with tempfile.TemporaryDirectory(prefix="jaxmlp-startup-") as tmp:
        for which in ("cold", "warm"):
            out = os.path.join(tmp, which)
            cmd = [sys.executable, script, "--dataset", dataset, "--manual-dir", manual_dir,
                   "--data-dir", os.path.join(tmp, "tfds"), "--steps", str(steps),
                   "--eval-every", str(steps), "--log-every", str(steps), "--out", out, "--quiet",
                   "--compile-cache", os.path.join(tmp, "xla")]  # cold compiles too, warm hits it
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                result[which] = {"error": f"timed out after {timeout_s:.0f} s"}
                continue
            wall = time.perf_counter() - t0
            try:
                with open(os.path.join(out, "summary.json")) as f:
                    summary = json.load(f)
                t = summary["timings"]
                result[which] = {
                    "first_step_seconds": t["startup_seconds"] + t["compile_seconds"],
                    "startup_seconds": t["startup_seconds"], "compile_seconds": t["compile_seconds"],
                    "process_seconds": wall, "data_source": summary.get("data", {}).get("source")}
            except (OSError, KeyError, TypeError, ValueError) as e:
                lines = (proc.stderr or proc.stdout or "").strip().splitlines()
                result[which] = {"error": f"exit {proc.returncode}: "
                                          f"{lines[-1] if lines else type(e).__name__ + ': ' + str(e)}"}
    return result


# --- the whole benchmark -------------------------------------------------------------------


def environment() -> dict:
    """The run record's environment (``records.environment``) plus what a benchmark reader
    also needs: process and CPU counts, and the versions as one dict, accelerator plugins
    included (package metadata: nothing heavy is imported)."""
    versions = {}
    for dist in ("jaxmlp", "jax", "jaxlib", "flax", "optax", "numpy", "jax-cuda12-plugin",
                 "jax-cuda13-plugin", "libtpu"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {**records.environment(), "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "cpu_count": os.cpu_count(), "versions": versions}


def _ratio(a, b):
    return a / b if a and b else None


def run_benchmark(config: BenchConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Run every measurement ``config`` asks for; returns one JSON-ready dict.

    ``log`` receives a line per step of progress (None: silent).
    """
    say = log or (lambda _: None)
    started = time.perf_counter()
    result: dict[str, Any] = {"config": config.to_dict()}
    if config.startup:  # first: the children need the accelerator, which we do not hold yet
        say("startup: scripts/train.py cold and warm ...")
        result["startup"] = measure_startup(dataset=config.startup_dataset,
                                            manual_dir=config.startup_manual_dir,
                                            steps=config.startup_steps)
    env = result["environment"] = environment()
    n = config.matmul_size or (2048 if env["backend"] == "cpu" else 8192)
    say(f"matmul ceiling ({n}x{n} f32) ...")
    result["matmul_ceiling"] = matmul_ceiling(n, repeats=config.repeats,
                                              target_seconds=config.target_seconds)
    result["device_peak"] = device_peak()

    host, data = synthetic_data(config.seed, config.num_train, config.num_test)
    key = jax.random.key(config.seed)
    # Two epochs of order are plenty: past the last, batch_at keeps reusing it.
    orders = train.epoch_orders(key, num_epochs=2, num_examples=config.num_train)
    # One init per width; every path starts from a copy of it, so all start equal.
    states = {h: train.init_state(key, _model_config(config, h)) for h in config.hidden}
    result["rows"], result["configs"] = _sweep(config, states, host, data, orders, result, say)
    result["ensembles"] = _ensembles(config, env["backend"], data, jax.random.fold_in(key, 1), say)
    if config.compile_times:  # last: jax.clear_caches() makes everything after it recompile
        with tempfile.TemporaryDirectory(prefix="jaxmlp-bench-cache-") as cache_root:
            for info in result["configs"]:
                h, b, s = tuple(info["hidden"]), info["batch_size"], info["scan_steps"]
                say(f"{_name(h)} batch {b}: compile cold and warm ...")
                info.update(compile_seconds(
                    lambda: train.run_steps.lower(states[h], data, orders, num_steps=s, batch_size=b),
                    os.path.join(cache_root, f"{_name(h)}-b{b}")))
    result["ratios"] = ratios(result)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _model_config(config: BenchConfig, hidden) -> Config:
    return Config(hidden=hidden, learning_rate=config.learning_rate)


def _name(hidden) -> str:
    return "-".join(map(str, hidden))


def _sweep(config, states, host, data, orders, result, say):
    """Every path at every width and batch size: (rows, per-configuration costs)."""
    ceiling, peak = result["matmul_ceiling"]["flops_per_s"], result["device_peak"]
    timing = dict(repeats=config.repeats, target_seconds=config.target_seconds,
                  warmup_calls=config.warmup_calls)
    rows, configs = [], []
    for hidden, state in states.items():
        for b in config.batch_sizes:
            s = config.scan_steps(b)
            info = {"hidden": list(hidden), "batch_size": b, "scan_steps": s,
                    **flops_per_step(state, data, orders, batch_size=b, scan_steps=s),
                    "analytic_flops": analytic_flops(hidden, b)}
            flops = info["xla_flops_per_step"]
            say(f"{_name(hidden)} batch {b}: the step's matmuls alone ...")
            info["step_matmuls"] = step_matmul_rate(hidden, b, repeats=config.repeats,
                                                    target_seconds=config.target_seconds)
            for variant in config.variants:
                say(f"{_name(hidden)} batch {b}: {LABELS[variant]} ...")
                loop = make_loop(variant, copy_tree(state), host=host, data=data, orders=orders,
                                 batch_size=b, scan_steps=s)
                m = measure(loop, **timing)
                del loop  # frees the path's state (and float32 copy) before the next
                rate = m["steps_per_s"]["median"]
                achieved = flops * rate if flops else None
                rows.append({"hidden": list(hidden), "batch_size": b, "variant": variant, **m,
                             "examples_per_s": rate * b, "achieved_flops_per_s": achieved,
                             "vs_ceiling": _ratio(achieved, ceiling),
                             "vs_peak": _ratio(achieved, peak and peak["flops_per_s"])})
            info["peak_device_bytes"] = peak_device_bytes()  # the process's peak so far
            configs.append(info)
    return rows, configs


def _ensembles(config, backend, data, key, say):
    """Model-steps/s of ``ensemble_run_steps`` against K, at the first width."""
    sizes = config.ensemble_sizes or ((1, 4) if backend == "cpu" else (1, 4, 16, 64))
    hidden, b = config.hidden[0], config.ensemble_batch_size
    state, orders = ensemble_inputs(max(sizes), _model_config(config, hidden), key,
                                    num_examples=config.num_train)
    out = []
    for k in sizes:
        say(f"ensemble K={k} batch {b} ...")
        loop = make_ensemble_loop(k, state, orders, data=data, batch_size=b,
                                  scan_steps=config.scan_steps(b, k))
        m = measure(loop, repeats=config.repeats, target_seconds=config.target_seconds,
                    warmup_calls=config.warmup_calls)
        del loop
        out.append({"k": k, "hidden": list(hidden), "batch_size": b, **m,
                    "model_steps_per_s": m["steps_per_s"]["median"] * k,
                    "peak_device_bytes": peak_device_bytes()})
    single = next((e["model_steps_per_s"] for e in out if e["k"] == 1), None)
    for e in out:
        e["vs_single"] = _ratio(e["model_steps_per_s"], single)
    return out


def ratios(result: dict) -> dict:
    """The targeted ratios, from the first width's rows of ``result`` (None where not measured)."""
    backend = result["environment"]["backend"]
    hidden = result["config"]["hidden"][0]
    rate = {(r["batch_size"], r["variant"]): r["steps_per_s"]["median"]
            for r in result["rows"] if r["hidden"] == list(hidden)}
    flops = {(r["batch_size"], r["variant"]): r["achieved_flops_per_s"]
             for r in result["rows"] if r["hidden"] == list(hidden)}
    ens = {e["k"]: e for e in result["ensembles"]}
    big_k = 64 if 64 in ens else max(ens, default=None)
    values = {
        "fused_vs_plain_jax": _ratio(rate.get((100, "fused")), rate.get((100, "plain_jax"))),
        "fused_vs_nnx_jit": _ratio(rate.get((100, "fused")), rate.get((100, "nnx_jit"))),
        "fused_vs_host_fed": _ratio(rate.get((100, "fused")), rate.get((100, "host_fed"))),
        "ensemble_vs_single": ens[big_k]["vs_single"] if big_k else None,
        "flops_vs_ceiling": _ratio(flops.get((1000, "fused")), result["matmul_ceiling"]["flops_per_s"]),
    }
    out = {}
    for name, (what, target, backends) in TARGETS.items():
        v = values[name]
        if name == "ensemble_vs_single" and big_k not in (None, 64):
            what = what.replace("K=64", f"K={big_k}")  # the target is for K=64 only
        applies = backend in backends and (name != "ensemble_vs_single" or big_k == 64)
        out[name] = {"what": what, "value": v, "target": target, "applies": applies,
                     "met": (v >= target) if applies and v is not None else None}
    # Informational, no target: what fusing buys over a per-step call, and uint8 vs float32.
    out["fused_vs_device_step"] = {
        "what": "fused / per-step device data, batch 100", "target": None, "applies": False,
        "met": None, "value": _ratio(rate.get((100, "fused")), rate.get((100, "device_step")))}
    shapes = next((c["step_matmuls"]["flops_per_s"] for c in result["configs"]
                   if c["batch_size"] == 1000 and c["hidden"] == list(hidden) and "step_matmuls" in c), None)
    out["flops_vs_step_matmuls"] = {
        "what": "fused FLOP/s / its own matmuls alone, batch 1000", "target": None, "applies": False,
        "met": None, "value": _ratio(flops.get((1000, "fused")), shapes)}
    out["f32_vs_uint8"] = {
        "what": "fused float32 data / uint8 data, batch 100", "target": None, "applies": False,
        "met": None, "value": _ratio(rate.get((100, "fused_f32")), rate.get((100, "fused")))}
    return out


# --- presentation ------------------------------------------------------------------------


def _si(x, unit=""):
    if x is None:
        return "-"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


def _secs(x):
    return "-" if x is None else f"{x:.2f}"


def _mib(x):
    return "-" if x is None else f"{x / 2**20:.1f}"


def format_table(result: dict) -> str:
    """The result as text: environment, per-path throughput, per-config costs, ensembles, ratios."""
    env, ceil, peak = result["environment"], result["matmul_ceiling"], result["device_peak"]
    v = env["versions"]
    lines = [f"jaxmlp benchmark: {env['device_kind']} ({env['backend']}) x{env['device_count']}, "
             f"jax {v.get('jax')}, flax {v.get('flax')}, python {env['python']}",
             f"matmul ceiling (measured): {ceil['n']}x{ceil['n']} f32 matmul at default precision, "
             f"{_si(ceil['flops_per_s'], 'FLOP/s')} (best of {len(ceil['flops_per_s_stats']['values'])})",
             ("published peak: " + (f"{peak['name']} {peak['precision'].upper()} dense "
                                    f"{_si(peak['flops_per_s'], 'FLOP/s')} (XLA's f32 matmul precision)"
                                    if peak else "none known for this device (CPU: see ceiling)")),
             "",
             "throughput: steps/s median [min - max] of the repeats; FLOP/s = XLA FLOPs/step x steps/s",
             f"{'widths':<16}{'batch':>6}  {'path':<24}{'steps/s':>9}  {'[min - max]':<19}"
             f"{'examples/s':>11}{'FLOP/s':>12}{'%ceil':>7}{'%peak':>7}"]
    for r in result["rows"]:
        s = r["steps_per_s"]
        spread = f"[{s['min']:,.0f} - {s['max']:,.0f}]"
        lines.append(f"{_name(r['hidden']):<16}{r['batch_size']:>6}  "
                     f"{LABELS[r['variant']]:<24}{s['median']:>9,.0f}  {spread:<19}"
                     f"{r['examples_per_s']:>11,.0f}{_si(r['achieved_flops_per_s']):>12}"
                     f"{_pct(r['vs_ceiling']):>7}{_pct(r['vs_peak']):>7}")
    lines += ["", "per configuration: FLOPs/step from XLA (one-step program) against 6*B*W and against the "
                  "exact matmul count (mm: no gradient for the images);",
              "the step's own matmuls timed alone (mm FLOP/s: a ceiling at this network's shapes); "
              "compile of the fused program, cold and warm (persistent cache hit?); program and peak "
              "device memory",
              f"{'widths':<16}{'batch':>6}{'scan':>6}{'XLA FLOP':>11}{'6BW':>11}{'/6BW':>6}{'/mm':>6}"
              f"{'mm FLOP/s':>11}{'cold s':>8}{'warm s':>8}{'hit':>5}{'prog MiB':>10}{'peak MiB':>10}"]
    for c in result["configs"]:
        a, xla = c["analytic_flops"], c["xla_flops_per_step"] or 0
        lines.append(f"{_name(c['hidden']):<16}{c['batch_size']:>6}{c['scan_steps']:>6}"
                     f"{_si(c['xla_flops_per_step']):>11}{_si(a['six_bw']):>11}"
                     f"{xla / a['six_bw']:>6.2f}{xla / a['matmul']:>6.2f}"
                     f"{_si(c.get('step_matmuls', {}).get('flops_per_s')):>11}"
                     f"{_secs(c.get('compile_cold_s')):>8}{_secs(c.get('compile_warm_s')):>8}"
                     f"{'-' if 'warm_cache_hits' not in c else 'yes' if c['warm_cache_hits'] else 'no':>5}"
                     f"{_mib(c['program_bytes']):>10}{_mib(c['peak_device_bytes']):>10}")
    if result["ensembles"]:
        e0 = result["ensembles"][0]
        lines += ["", f"ensembles (vmap over K models, batch {e0['batch_size']}, "
                      f"widths {_name(e0['hidden'])})",
                  f"{'K':>5}{'scan':>6}{'steps/s':>10}{'model-steps/s':>15}{'x K=1':>8}{'peak MiB':>10}"]
        for e in result["ensembles"]:
            lines.append(f"{e['k']:>5}{e['steps_per_call']:>6}{e['steps_per_s']['median']:>10,.0f}"
                         f"{e['model_steps_per_s']:>15,.0f}"
                         f"{'-' if e['vs_single'] is None else format(e['vs_single'], '.2f'):>8}"
                         f"{_mib(e['peak_device_bytes']):>10}")
    lines += ["", "ratios (same run)"]
    for r in result["ratios"].values():
        value = "not measured" if r["value"] is None else f"{r['value']:.2f}"
        if r["target"] is None:
            verdict = ""
        elif not r["applies"]:
            verdict = f"(target >= {r['target']:g} is for another backend/K)"
        else:
            verdict = f"target >= {r['target']:g}: " + {True: "met", False: "NOT met", None: "-"}[r["met"]]
        lines.append(f"  {r['what']:<48}{value:>13}  {verdict}")
    st = result.get("startup")
    if st:
        lines += ["", f"time to first step of scripts/train.py ({st['dataset']}, {st['steps']} steps)"]
        if "error" in st:
            lines.append(f"  not measured: {st['error']}")
        for which in ("cold", "warm"):
            w = st.get(which)
            if w is None:
                continue
            lines.append(f"  {which}: not measured: {w['error']}" if "error" in w else
                         f"  {which}: {w['first_step_seconds']:.2f} s (startup {w['startup_seconds']:.2f} s"
                         f" + compile {w['compile_seconds']:.2f} s; data from {w['data_source']}; "
                         f"process {w['process_seconds']:.1f} s)")
    lines.append(f"\nbenchmark wall time {result['wall_seconds']:.1f} s")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    """``result`` as indented JSON, written to a temporary name and renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False, default=float)
    os.replace(tmp, path)


def plot(result: dict, path: str) -> None:
    """examples/s against batch size per path (log-log) and model-steps/s against K."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8))
    ax, ax_k = fig.subplots(1, 2)
    widths = [list(h) for h in result["config"]["hidden"]]
    for i, hidden in enumerate(widths):  # the first width solid, others dashed
        for variant in VARIANTS:
            pts = sorted((r["batch_size"], r["examples_per_s"]) for r in result["rows"]
                         if r["variant"] == variant and r["hidden"] == hidden)
            if pts:
                label = LABELS[variant] + ("" if len(widths) == 1 else f" ({_name(hidden)})")
                ax.plot(*zip(*pts), "-" if i == 0 else "--", marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="examples / s",
           title=f"training throughput, {result['environment']['device_kind']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ens = result["ensembles"]
    if ens:
        ks = [e["k"] for e in ens]
        ax_k.plot(ks, [e["model_steps_per_s"] for e in ens], marker="o", label="measured")
        if ens[0]["k"] == 1:
            ax_k.plot(ks, [ens[0]["model_steps_per_s"] * k for k in ks], ":", color="grey",
                      label="K x single (linear)")
        ax_k.set(xscale="log", yscale="log", xlabel="models K", ylabel="model-steps / s",
                 title=f"ensembles, batch {ens[0]['batch_size']}")
        ax_k.grid(True, which="both", alpha=0.3)
        ax_k.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig).print_png(path)
