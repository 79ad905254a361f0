"""The accelerator suite: what one GPU buys, in minutes, without TFDS or TensorFlow.

``run_accelerator(AcceleratorConfig(...)) -> dict`` measures

  (a) ``paths``          every training path at batch 100 (target: fused >= 10x host-fed)
  (b) ``batch_sweep``    the fused path (and plain JAX) against batch size, up to 65,536
  (c) ``ensembles``      K = 1 .. 1,024 models of both kinds against one model
                         (target: >= 100x its model-steps/s at the best K)
  (d) ``seed_schedule``  the seed experiment's whole schedule through ``train_and_evaluate``:
                         10,000 steps of batch 100, the test set every 100; time and accuracy
  (e) ``seed_ensemble``  1,000 seeds of that schedule as one ensemble: time and the
                         distribution of final test accuracy

(a)-(c) run on random data; (d) and (e) on an .npz (``data_npz``) or learnable
synthetic data. (a)-(c) each have a share of ``budget_seconds`` and stop adding
sizes once theirs is spent; (d) and (e) are skipped when what is left of the
whole cannot cover their estimate (from (a) and (c)); what was skipped, and
why, is in the result.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxmlp import history as hist
from jaxmlp import loop
from jaxmlp.bench import measure, timing
from jaxmlp.bench.data import learnable_dataset, npz_dataset, synthetic_data
from jaxmlp.bench.measure import ratio
from jaxmlp.bench.paths import KINDS, LABELS, VARIANTS
from jaxmlp.bench.processes import RUN_PARTS
from jaxmlp.bench.run import environment, hardware
from jaxmlp.config import Config

# Shares of the budget for (a)-(c); (d) and (e), one run each, get what is left of the whole.
SHARES = {"paths": 0.08, "batch_sweep": 0.20, "ensembles": 0.30}
TARGETS = {  # key -> (what, target); they apply on accelerators, not on CPU
    "fused_vs_host_fed": ("fused / host-fed per-step, batch 100", 10.0),
    "ensemble_vs_single": ("best ensemble / one model, model-steps/s, batch 100", 100.0),
}
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig(timing.TimingConfig):
    """Sizes and time of each part. ``AcceleratorConfig.quick()`` runs on a CPU in CI."""

    repeats: int = 3
    target_seconds: float = 0.3
    scan_examples: int = 1_000_000
    path_batch_size: int = 100  # (a), and the batch of (c)
    variants: tuple[str, ...] = VARIANTS
    batch_sizes: tuple[int, ...] = (100, 1_000, 4_096, 16_384, 65_536)  # (b)
    sweep_variants: tuple[str, ...] = ("fused", "plain_jax")
    ensemble_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 1_024)  # (c); each compiles twice per kind
    ensemble_kinds: tuple[str, ...] = KINDS
    schedule_steps: int = 10_000  # (d) and (e): the seed schedule
    num_seeds: int = 1_000  # (e)
    data_npz: str | None = None  # (d) and (e): real data; None: learnable synthetic data
    num_train: int = 60_000  # synthetic sizes
    num_test: int = 10_000
    budget_seconds: float = 420.0  # leaves a minute of 8 for start-up and the last item's overrun

    def __post_init__(self):
        super().__post_init__()
        for name, known, given in (("variants", VARIANTS, self.variants + self.sweep_variants),
                                   ("ensemble kinds", KINDS, self.ensemble_kinds)):
            if set(given) - set(known):
                raise ValueError(f"unknown {name} {sorted(set(given) - set(known))}; "
                                 f"known: {', '.join(known)}")
        sizes = (self.path_batch_size, *self.batch_sizes, *self.ensemble_sizes, self.num_seeds,
                 self.schedule_steps)
        if min(sizes) < 1 or self.budget_seconds <= 0:
            raise ValueError("sizes, steps and seeds must be >= 1 and the budget > 0")
        Config(steps=self.schedule_steps)  # the schedule must be a valid run (eval_every divides it)

    @classmethod
    def quick(cls, **changes) -> "AcceleratorConfig":
        """CI-sized on a CPU: a few hundred steps, K up to 8, 8 seeds; the same keys."""
        base = dict(repeats=2, target_seconds=0.05, warmup_calls=1, scan_examples=2_000,
                    min_scan_steps=5, max_scan_steps=50, matmul_size=256, memory_bytes=2**22,
                    batch_sizes=(100, 1_000),
                    ensemble_sizes=(1, 8), schedule_steps=300, num_seeds=8, num_train=6_000,
                    num_test=1_000)
        return cls(**{**base, **changes})

    def budget(self, part: str, whole: timing.Budget) -> timing.Budget:
        return timing.Budget(SHARES[part] * self.budget_seconds, whole)


def run_accelerator(config: AcceleratorConfig, *, log: Callable[[str], None] | None = None) -> dict:
    """Run parts (a)-(e); returns one JSON-ready dict (the same keys at any size)."""
    say = log or (lambda _: None)
    whole = timing.Budget(config.budget_seconds)
    result: dict[str, Any] = {"suite": "accelerator", "config": config.to_dict()}
    env = result["environment"] = environment()
    result.update(hardware(config, env["backend"], say))
    peak = result["device_peak"] and result["device_peak"]["flops_per_s"]
    n_train = max(config.num_train, *config.batch_sizes)  # one batch of the largest fits
    host, data = synthetic_data(config.seed, n_train, config.num_test)
    orders = loop.epoch_orders(jax.random.key(config.seed), num_epochs=2, num_examples=n_train)
    state = loop.init_state(jax.random.key(config.seed), Config(learning_rate=config.learning_rate))

    def rows(variants, sizes, budget):
        out, configs, skipped = [], [], []
        for b in sizes:
            if budget.spent():
                skipped.append(b)
                continue
            s = config.scan_steps(b)
            info = timing.flops_per_step(state, data, orders, batch_size=b, scan_steps=s)
            configs.append({"batch_size": b, **info})
            say(f"batch {b}: {', '.join(LABELS[v] for v in variants)}, in turns ...")
            out += measure.path_rows(
                variants, state, hidden=Config().hidden, host=host, data=data, orders=orders,
                batch_size=b, scan_steps=s, timing=config.timing,
                flops=info["xla_flops_per_step"], ceiling=result["matmul_ceiling"]["flops_per_s"],
                peak=peak)
        return {"rows": out, "configs": configs, "skipped": skipped, "budget_seconds": budget.seconds,
                "seconds": budget.elapsed()}

    result["paths"] = rows(config.variants, (config.path_batch_size,), config.budget("paths", whole))
    result["batch_sweep"] = rows(config.sweep_variants, config.batch_sizes,
                                 config.budget("batch_sweep", whole))
    host = state = None  # frees them before (c); rows() is not called again
    result["ensembles"] = _ensembles(config, data, config.budget("ensembles", whole), say,
                                     result["memory_ceiling"]["bytes_per_s"])
    data = orders = None  # (d) and (e) bring their own data

    dataset = npz_dataset(config.data_npz) if config.data_npz else learnable_dataset(
        config.seed, config.num_train, config.num_test)
    result["data"] = {"source": dataset.source, "train_examples": len(dataset.train_labels),
                      "test_examples": len(dataset.test_labels)}
    base = Config(steps=config.schedule_steps, learning_rate=config.learning_rate, seed=config.seed)
    fused = next((r for r in result["paths"]["rows"] if r["variant"] == "fused"), None)
    say(f"the seed schedule: {base.steps} steps ...")
    result["seed_schedule"] = _schedule(
        base, dataset, whole, estimate=fused and base.steps / fused["steps_per_s"]["median"])
    best = result["ensembles"]["best"].get("seeds", {}).get("model_steps_per_s")
    say(f"{config.num_seeds} seeds of the seed schedule as one ensemble ...")
    result["seed_ensemble"] = _schedule(
        base.replace(seeds=tuple(range(config.num_seeds))), dataset, whole,
        estimate=best and config.num_seeds * base.steps / best)
    result["targets"] = targets(result)
    result["wall_seconds"] = whole.elapsed()
    return result


def _ensembles(config: AcceleratorConfig, data: loop.Data, budget: timing.Budget, say,
               memory_ceiling: float) -> dict:
    base = Config(learning_rate=config.learning_rate, batch_size=config.path_batch_size)
    out = measure.ensembles(base, kinds=config.ensemble_kinds, sizes=config.ensemble_sizes, data=data,
                            scan_steps=lambda k: config.scan_steps(base.batch_size, k),
                            timing=config.timing, budget=budget, say=say,
                            memory_ceiling=memory_ceiling)
    return {**out, "best": measure.best_ensembles(out["rows"], config.ensemble_kinds),
            "budget_seconds": budget.seconds,
            "seconds": budget.elapsed()}


def _schedule(config: Config, dataset, budget: timing.Budget, *, estimate: float | None) -> dict:
    """One ``train_and_evaluate`` run of ``config`` on ``dataset``: time and final accuracy.

    Skipped when ``estimate`` (seconds of training, from the parts before) with a
    margin for evaluation and compiling exceeds what is left of ``budget``.
    """
    from jaxmlp.run import train_and_evaluate

    k = len(config.members) if config.is_ensemble else 1
    out = {"steps": config.steps, "batch_size": config.batch_size, "eval_every": config.eval_every,
           "models": k, "estimated_seconds": None if estimate is None else 1.5 * estimate + 10,
           "skipped": None, "wall_seconds": None, **dict.fromkeys(RUN_PARTS),
           "model_steps_per_s": None, "final_test_accuracy": None, "accuracy": None}
    if config.is_ensemble:
        out["accuracy"] = _distribution(None)
    if budget.spent():
        out["skipped"] = "the budget is spent"
        return out
    if out["estimated_seconds"] is not None and out["estimated_seconds"] > budget.left():
        out["skipped"] = (f"estimated {out['estimated_seconds']:.0f} s > "
                          f"{budget.left():.0f} s left of the budget")
        return out
    t0 = time.perf_counter()
    run = train_and_evaluate(config, dataset=dataset, quiet=True)
    wall = time.perf_counter() - t0
    timings = run.summary.get("timings", {})
    final = np.atleast_1d(np.asarray(hist.summarize(run.history)["final_test_accuracy"], np.float64))
    out.update({key: timings.get(key) for key in RUN_PARTS}, wall_seconds=wall,
               model_steps_per_s=ratio(k * config.steps, timings.get("train_seconds")),
               final_test_accuracy=final.tolist() if config.is_ensemble else float(final[0]))
    if config.is_ensemble:
        out["accuracy"] = _distribution(final)
    return out


def _distribution(values: np.ndarray | None) -> dict:
    """mean, std, min, max and ``PERCENTILES`` of the finite ``values``, and how many models
    diverged (a non-finite final accuracy); all None without values."""
    if values is None:
        return {"mean": None, "std": None, "min": None, "max": None, "diverged": None,
                "percentiles": {str(p): None for p in PERCENTILES}}
    ok = values[np.isfinite(values)]
    if not ok.size:
        return {**_distribution(None), "diverged": int(values.size)}
    return {"mean": float(ok.mean()), "std": float(ok.std()), "min": float(ok.min()),
            "max": float(ok.max()), "diverged": int(values.size - ok.size), "percentiles": {
                str(p): float(v) for p, v in zip(PERCENTILES, np.percentile(ok, PERCENTILES))}}


def targets(result: dict) -> dict:
    """The suite's targets, from this run's parts (they apply on accelerators only)."""
    rate = {r["variant"]: r["steps_per_s"]["median"] for r in result["paths"]["rows"]}
    best = max(result["ensembles"]["best"].values(), key=lambda b: b["model_steps_per_s"] or 0,
               default={"vs_single": None})
    values = {"fused_vs_host_fed": ratio(rate.get("fused"), rate.get("host_fed")),
              "ensemble_vs_single": best["vs_single"]}
    applies = result["environment"]["backend"] != "cpu"
    return {key: {"what": what, "value": values[key], "target": target, "applies": applies,
                  "met": values[key] >= target if applies and values[key] is not None else None}
            for key, (what, target) in TARGETS.items()}
