"""Timing primitives: steady-state rates, hardware ceilings, compile time, FLOPs, memory.

Timing rules: each path is warmed up (compile + one steady call) first, a
repeat is a run of calls ended by one ``jax.block_until_ready`` (calls chain
through the donated state, so the last output waits for all of them), and the
Python GC is off while timing. Per-step loops never sync the host per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlp import loop, model
from jaxmlp.bench.paths import Loop


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


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How each path is timed; both suites' configs extend this."""

    repeats: int = 5  # timed repeats per path; median and spread over these
    target_seconds: float = 0.5  # each repeat runs about this long
    warmup_calls: int = 2  # untimed calls first: compile, then one steady call
    scan_examples: int = 100_000  # a fused call covers about this many examples ...
    min_scan_steps: int = 10  # ... within these bounds on its step count
    max_scan_steps: int = 1_000
    matmul_size: int | None = None  # n of the n x n f32 ceiling matmul (None: 2048 CPU, 8192 else)
    memory_bytes: int | None = None  # array of the bandwidth ceiling (None: 256 MiB CPU, 2 GiB else)
    learning_rate: float = 0.3
    seed: int = 0

    def __post_init__(self):
        if self.repeats < 1 or self.warmup_calls < 1 or self.target_seconds <= 0:
            raise ValueError("repeats and warmup_calls must be >= 1, target_seconds > 0")

    @property
    def timing(self) -> dict:
        """``measure``'s keyword arguments."""
        return {"repeats": self.repeats, "target_seconds": self.target_seconds,
                "warmup_calls": self.warmup_calls}

    def scan_steps(self, batch_size: int, models: int = 1) -> int:
        """Steps per fused call: enough to amortise dispatch, bounded so a call stays short."""
        steps = self.scan_examples // (batch_size * models)
        return max(self.min_scan_steps, min(self.max_scan_steps, steps))

    def ceiling_size(self, backend: str) -> int:
        return self.matmul_size or (2048 if backend == "cpu" else 8192)

    def memory_size(self, backend: str) -> int:
        return self.memory_bytes or (2**28 if backend == "cpu" else 2**31)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Budget:
    """Seconds a part of the benchmark may take; ``spent()`` says when to stop adding sizes.

    A part's budget is also spent once its ``whole`` (the suite's) is.
    """

    seconds: float | None  # None: no limit
    whole: "Budget | None" = None
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0 or (self.whole is not None and self.whole.spent())


def stats(values) -> dict:
    """median, min, max, quartiles and all values of a list of rates."""
    v = np.asarray(values, float)
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()),
            "q25": float(q25), "q75": float(q75), "values": v.tolist()}


def measure(timed: Loop, *, repeats: int, target_seconds: float, warmup_calls: int) -> dict:
    """Steady-state steps/s of ``timed``: warm-up excluded, ``repeats`` timed runs of calls."""
    return measure_side_by_side([timed], repeats=repeats, target_seconds=target_seconds,
                                warmup_calls=warmup_calls)[0]


def measure_side_by_side(loops: Sequence[Loop], *, repeats: int, target_seconds: float,
                         warmup_calls: int) -> list[dict]:
    """``measure`` of several loops at once, one result each.

    Each repeat times every loop once, starting with a different one each time. The
    machine's speed drifts (10-30% from minute to minute on a shared CPU): timed one
    after the other, the loops would meet different speeds and their ratio would carry
    the drift; timed in turns, the drift reaches them alike.
    """
    calls = []
    for timed in loops:
        for _ in range(warmup_calls):
            jax.block_until_ready(timed.call())
        t0 = time.perf_counter()
        jax.block_until_ready(timed.call())
        calls.append(max(1, math.ceil(target_seconds / max(time.perf_counter() - t0, 1e-9))))
    rates = [[] for _ in loops]
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection mid-repeat is noise, not the path's cost
    try:
        for r in range(repeats):
            for j in range(len(loops)):
                i = (r + j) % len(loops)
                t0 = time.perf_counter()
                for _ in range(calls[i]):
                    out = loops[i].call()
                jax.block_until_ready(out)  # calls chain through the state: this waits for all
                rates[i].append(calls[i] * loops[i].steps_per_call / (time.perf_counter() - t0))
    finally:
        if gc_was_enabled:
            gc.enable()
    return [{"steps_per_s": stats(r), "calls_per_repeat": c, "steps_per_call": timed.steps_per_call}
            for timed, r, c in zip(loops, rates, calls)]


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


def xla_cost(compiled, key: str) -> float | None:
    """``key`` ('flops', 'bytes accessed') of XLA's cost analysis of a compiled program
    (None where unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # NotImplementedError on some backends; the format is not a contract
        return None
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    value = cost.get(key) if isinstance(cost, dict) else None
    return float(value) if value is not None and value > 0 else None


def xla_flops(compiled) -> float | None:
    """'flops' of XLA's cost analysis of a compiled program (None where unavailable)."""
    return xla_cost(compiled, "flops")


def memory_ceiling(num_bytes: int, *, repeats: int = 5, target_seconds: float = 0.5,
                   chain: int = 4) -> dict:
    """Best bytes/s of an elementwise pass over a float32 array of ``num_bytes`` (each pass
    reads and writes it once): the device's memory bandwidth as XLA reaches it."""
    x = jnp.zeros((num_bytes // 4,), jnp.float32)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, chain, lambda _, x: x * 0.5 + 1.0, x),
                donate_argnums=0)
    box = [x]

    def call():
        box[0] = f(box[0])
        return box[0]

    m = measure(Loop(call, chain), repeats=repeats, target_seconds=target_seconds, warmup_calls=1)
    rates = [r * 2 * num_bytes for r in m["steps_per_s"]["values"]]
    return {"bytes": num_bytes, "bytes_per_s": max(rates), "bytes_per_s_stats": stats(rates)}


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
    lower = lambda n: loop.run_steps.lower(state, data, orders, num_steps=n, batch_size=batch_size)
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

