"""The default suite: every training path against batch size and width, ensembles, ratios.

``run_benchmark(BenchConfig(...)) -> dict`` measures, in one process, on
synthetic data of MNIST's shape: for each batch size (and width) every path's
steady-state steps/s over several repeats (median, min/max, IQR), compile time
cold and warm (JAX's persistent cache), FLOPs per step from XLA's cost
analysis, achieved FLOP/s against a matmul ceiling measured here and a
published peak, and memory. Then ensembles of both kinds against K, and the
target ratios of issues 2 and 5. Optionally, in child processes first: time
to first step of ``scripts/train.py`` and the whole default run against the
2017 TF1 program (``jaxmlp.bench.processes``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import tempfile
import time
from typing import Any, Callable

import jax

from jaxmlp import loop, records
from jaxmlp.bench import measure, processes, timing
from jaxmlp.bench.data import synthetic_data
from jaxmlp.bench.measure import name, ratio
from jaxmlp.bench.paths import KINDS, LABELS, VARIANTS
from jaxmlp.config import Config

DEFAULT_HIDDEN = (200, 100, 60, 30)

# The ratios issues 2 and 5 set targets for: key -> (what, target, backends it applies to).
TARGETS = {
    "fused_vs_plain_jax": ("fused / plain-JAX scan, batch 100", 0.95, ("cpu", "gpu", "tpu")),
    "fused_vs_nnx_jit": ("fused / nnx.jit per-step, batch 100", 1.5, ("cpu",)),
    "fused_vs_host_fed": ("fused / host-fed per-step, batch 100", 10.0, ("gpu",)),
    "ensemble_vs_single": ("ensemble of 64 seeds / one model, model-steps/s, batch 100", 20.0, ("gpu",)),
    "flops_vs_ceiling": ("fused FLOP/s / matmul ceiling, batch 1000", 0.9, ("cpu",)),
}

# Besides records.environment()'s: this package and the accelerator plugins behind jax.
_EXTRA_DISTRIBUTIONS = ("jaxmlp", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu")


@dataclasses.dataclass(frozen=True)
class BenchConfig(timing.TimingConfig):
    """What to measure and how long. ``BenchConfig.quick()`` is CI-sized."""

    batch_sizes: tuple[int, ...] = (100, 1_000, 10_000)
    hidden: tuple[tuple[int, ...], ...] = (DEFAULT_HIDDEN,)  # widths to sweep; ratios use the first
    variants: tuple[str, ...] = VARIANTS
    ensemble_sizes: tuple[int, ...] | None = None  # None: (1, 4) on CPU, (1, 4, 16, 64) elsewhere
    ensemble_kinds: tuple[str, ...] = KINDS
    ensemble_batch_size: int = 100
    compile_times: bool = True  # cold/warm compile with the persistent cache
    num_train: int = 60_000
    num_test: int = 10_000
    startup: bool = False  # also time scripts/train.py to its first step, cold and warm
    startup_dataset: str = "fashion_mnist"
    startup_manual_dir: str = "/usr/share/datasets/fashion-mnist"
    startup_steps: int = 100
    whole_run: bool = False  # also time the whole default run against the 2017 TF1 program
    dataset: str = "fashion_mnist"  # the whole run's data ...
    manual_dir: str = "/usr/share/datasets/fashion-mnist"
    data_dir: str | None = None  # ... its TFDS data dir (None: a fresh temporary one)
    whole_run_steps: int | None = None  # None: the default schedule's 10,000
    whole_run_repeats: int = 3  # warm jaxmlp runs, alternating with as many of the 2017 program

    def __post_init__(self):
        super().__post_init__()
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        unknown = set(self.ensemble_kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown ensemble kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        for b in (*self.batch_sizes, self.ensemble_batch_size):
            if not 0 < b <= self.num_train:
                raise ValueError(f"batch size {b} must be in [1, {self.num_train}]")
        if any(k < 1 for k in self.ensemble_sizes or ()):
            raise ValueError(f"ensemble sizes must be >= 1, got {self.ensemble_sizes}")
        if self.whole_run_repeats < 1:
            raise ValueError(f"whole-run repeats must be >= 1, got {self.whole_run_repeats}")

    @classmethod
    def quick(cls, **changes) -> "BenchConfig":
        """Seconds, not minutes: one batch size, short scans, few repeats."""
        base = dict(batch_sizes=(100,), ensemble_sizes=(1, 2), repeats=3, target_seconds=0.05,
                    warmup_calls=1, scan_examples=2_000, min_scan_steps=5, max_scan_steps=50,
                    matmul_size=1024, memory_bytes=2**24, startup_steps=10)
        return cls(**{**base, **changes})


def environment() -> dict:
    """The run record's environment (``records.environment``) plus what a benchmark reader
    also needs: process and CPU counts, and every version as one dict, accelerator plugins
    included (package metadata: nothing heavy is imported)."""
    env = records.environment()
    versions = {key: env[key] for key in records._VERSIONED if env.get(key)}
    for dist in _EXTRA_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {**env, "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "cpu_count": os.cpu_count(), "versions": versions}


def hardware(config: timing.TimingConfig, backend: str, say) -> dict:
    """The matmul and memory-bandwidth ceilings measured here and the device's published peak."""
    n, size = config.ceiling_size(backend), config.memory_size(backend)
    say(f"matmul ceiling ({n}x{n} f32) ...")
    matmul = timing.matmul_ceiling(n, repeats=config.repeats, target_seconds=config.target_seconds)
    say(f"memory ceiling ({size / 2**20:.0f} MiB read and written) ...")
    memory = timing.memory_ceiling(size, repeats=config.repeats, target_seconds=config.target_seconds)
    return {"matmul_ceiling": matmul, "memory_ceiling": memory, "device_peak": timing.device_peak()}


def run_benchmark(config: BenchConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Run every measurement ``config`` asks for; returns one JSON-ready dict.

    ``log`` receives a line per step of progress (None: silent).
    """
    say = log or (lambda _: None)
    started = time.perf_counter()
    result: dict[str, Any] = {"config": config.to_dict()}
    # Child processes first: they need the accelerator, which this process does not hold yet.
    if config.startup:
        say("startup: scripts/train.py cold and warm ...")
        result["startup"] = processes.measure_startup(
            dataset=config.startup_dataset, manual_dir=config.startup_manual_dir,
            steps=config.startup_steps)
    if config.whole_run:
        say("whole run: scripts/train.py and the 2017 TF1 program ...")
        result["whole_run"] = processes.whole_run(
            dataset=config.dataset, manual_dir=config.manual_dir, data_dir=config.data_dir,
            steps=config.whole_run_steps, repeats=config.whole_run_repeats, log=say)
    env = result["environment"] = environment()
    result.update(hardware(config, env["backend"], say))

    host, data = synthetic_data(config.seed, config.num_train, config.num_test)
    key = jax.random.key(config.seed)
    # Two epochs of order are plenty: past the last, batch_at keeps reusing it.
    orders = loop.epoch_orders(key, num_epochs=2, num_examples=config.num_train)
    # One init per width; every path starts from a copy of it, so all start equal.
    states = {h: loop.init_state(key, _model_config(config, h)) for h in config.hidden}
    result["rows"], result["configs"] = _sweep(config, states, host, data, orders, result, say)
    sizes = config.ensemble_sizes or ((1, 4) if env["backend"] == "cpu" else (1, 4, 16, 64))
    base = _model_config(config, config.hidden[0]).replace(batch_size=config.ensemble_batch_size)
    ens = measure.ensembles(base, kinds=config.ensemble_kinds, sizes=sizes, data=data,
                            scan_steps=lambda k: config.scan_steps(base.batch_size, k),
                            timing=config.timing, say=say,
                            memory_ceiling=result["memory_ceiling"]["bytes_per_s"])
    result["ensemble_single"], result["ensembles"] = ens["single"], ens["rows"]
    if config.compile_times:  # last: jax.clear_caches() makes everything after it recompile
        with tempfile.TemporaryDirectory(prefix="jaxmlp-bench-cache-") as cache_root:
            for info in result["configs"]:
                h, b, s = tuple(info["hidden"]), info["batch_size"], info["scan_steps"]
                say(f"{name(h)} batch {b}: compile cold and warm ...")
                info.update(timing.compile_seconds(
                    lambda: loop.run_steps.lower(states[h], data, orders, num_steps=s, batch_size=b),
                    os.path.join(cache_root, f"{name(h)}-b{b}")))
    result["ratios"] = ratios(result)
    result["wall_seconds"] = time.perf_counter() - started
    return result


def _model_config(config: BenchConfig, hidden) -> Config:
    return Config(hidden=hidden, learning_rate=config.learning_rate)


def _sweep(config, states, host, data, orders, result, say):
    """Every path at every width and batch size: (rows, per-configuration costs)."""
    ceiling, peak = result["matmul_ceiling"]["flops_per_s"], result["device_peak"]
    rows, configs = [], []
    for hidden, state in states.items():
        for b in config.batch_sizes:
            s = config.scan_steps(b)
            info = {"hidden": list(hidden), "batch_size": b, "scan_steps": s,
                    **timing.flops_per_step(state, data, orders, batch_size=b, scan_steps=s),
                    "analytic_flops": timing.analytic_flops(hidden, b)}
            say(f"{name(hidden)} batch {b}: the step's matmuls alone ...")
            info["step_matmuls"] = timing.step_matmul_rate(hidden, b, repeats=config.repeats,
                                                           target_seconds=config.target_seconds)
            say(f"{name(hidden)} batch {b}: {', '.join(LABELS[v] for v in config.variants)}, in turns ...")
            rows += measure.path_rows(
                config.variants, state, hidden=hidden, host=host, data=data, orders=orders,
                batch_size=b, scan_steps=s, timing=config.timing,
                flops=info["xla_flops_per_step"], ceiling=ceiling,
                peak=peak and peak["flops_per_s"])
            info["peak_device_bytes"] = timing.peak_device_bytes()  # the process's peak so far
            configs.append(info)
    return rows, configs


def _rates(rows, hidden, key: str) -> dict:
    """{(batch size, variant): row[key]} for the rows of widths ``hidden``."""
    return {(r["batch_size"], r["variant"]): r[key] for r in rows if r["hidden"] == list(hidden)}


def ratios(result: dict) -> dict:
    """The targeted ratios, from the first width's rows of ``result`` (None where not measured)."""
    backend = result["environment"]["backend"]
    hidden = result["config"]["hidden"][0]
    rate = _rates(result["rows"], hidden, "steps_per_s")
    rate = {key: s["median"] for key, s in rate.items()}
    flops = _rates(result["rows"], hidden, "achieved_flops_per_s")
    ens = {}  # K -> its fastest row of seeds (on one device or split over several)
    for e in sorted((e for e in result["ensembles"] if e["kind"] == "seeds"),
                    key=lambda e: e["model_steps_per_s"]):
        ens[e["k"]] = e
    big_k = 64 if 64 in ens else max(ens, default=None)
    values = {
        "fused_vs_plain_jax": ratio(rate.get((100, "fused")), rate.get((100, "plain_jax"))),
        "fused_vs_nnx_jit": ratio(rate.get((100, "fused")), rate.get((100, "nnx_jit"))),
        "fused_vs_host_fed": ratio(rate.get((100, "fused")), rate.get((100, "host_fed"))),
        "ensemble_vs_single": ens[big_k]["vs_single"] if big_k else None,
        "flops_vs_ceiling": ratio(flops.get((1000, "fused")), result["matmul_ceiling"]["flops_per_s"]),
    }
    out = {}
    for key, (what, target, backends) in TARGETS.items():
        v = values[key]
        if key == "ensemble_vs_single" and big_k not in (None, 64):
            what = what.replace("64 seeds", f"{big_k} seeds")  # the target is for K=64 only
        applies = backend in backends and (key != "ensemble_vs_single" or big_k == 64)
        out[key] = {"what": what, "value": v, "target": target, "applies": applies,
                    "met": (v >= target) if applies and v is not None else None}
    shapes = next((c["step_matmuls"]["flops_per_s"] for c in result["configs"]
                   if c["batch_size"] == 1000 and c["hidden"] == list(hidden)), None)
    # Informational, no target: what fusing buys over a per-step call, and uint8 vs float32.
    for key, what, value in (
            ("fused_vs_device_step", "fused / per-step device data, batch 100",
             ratio(rate.get((100, "fused")), rate.get((100, "device_step")))),
            ("flops_vs_step_matmuls", "fused FLOP/s / its own matmuls alone, batch 1000",
             ratio(flops.get((1000, "fused")), shapes)),
            ("f32_vs_uint8", "fused float32 data / uint8 data, batch 100",
             ratio(rate.get((100, "fused_f32")), rate.get((100, "fused")))),
            ("after_vs_before", "fused with metrics after / before the update, batch 100",
             ratio(rate.get((100, "fused_after")), rate.get((100, "fused"))))):
        out[key] = {"what": what, "target": None, "applies": False, "met": None, "value": value}
    return out
