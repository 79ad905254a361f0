"""One measurement, one JSON row: a training path at a batch size, or ensembles against K.

Both suites (``jaxmlp.bench.run`` and ``jaxmlp.bench.accelerator``) build
their rows here, so a row means the same in either.
"""

from __future__ import annotations

from typing import Callable

import jax

from jaxmlp import loop, parallel
from jaxmlp.bench import paths
from jaxmlp.bench.timing import Budget, measure, peak_device_bytes, xla_cost
from jaxmlp.config import Config


def ratio(a, b):
    """a / b, or None where either is missing or zero."""
    return a / b if a and b else None


def name(hidden) -> str:
    """Hidden widths as one token, e.g. 200-100-60-30."""
    return "-".join(map(str, hidden))


def path_row(variant: str, state, *, hidden, host: dict, data: loop.Data, orders,
             batch_size: int, scan_steps: int, timing: dict, flops: float | None,
             ceiling: float | None, peak: float | None) -> dict:
    """Steady-state throughput of ``variant`` started from a copy of ``state`` (widths ``hidden``).

    ``timing``: ``measure``'s keyword arguments; ``flops``: FLOPs per step;
    ``ceiling``/``peak``: FLOP/s to compare the achieved rate with.
    """
    timed = paths.make_loop(variant, loop.copy_tree(state), host=host, data=data, orders=orders,
                            batch_size=batch_size, scan_steps=scan_steps)
    m = measure(timed, **timing)
    del timed  # frees the path's state (and float32 copy) before the next
    rate = m["steps_per_s"]["median"]
    achieved = flops * rate if flops else None
    return {"hidden": list(hidden), "batch_size": batch_size,
            "variant": variant, **m, "examples_per_s": rate * batch_size,
            "achieved_flops_per_s": achieved, "vs_ceiling": ratio(achieved, ceiling),
            "vs_peak": ratio(achieved, peak)}


def _traffic(config: Config, data: loop.Data, steps_per_s: float, memory_ceiling) -> dict:
    """XLA's count of bytes one step reads and writes, and the rate that makes at
    ``steps_per_s``, against the measured ``memory_ceiling`` (bytes/s)."""
    per_step = xla_cost(paths.one_step_program(config, data=data), "bytes accessed")
    rate = per_step * steps_per_s if per_step else None
    return {"xla_bytes_per_step": per_step, "achieved_bytes_per_s": rate,
            "vs_memory_ceiling": ratio(rate, memory_ceiling)}


def ensembles(base: Config, *, kinds, sizes, data: loop.Data, scan_steps: Callable[[int], int],
              timing: dict, budget: Budget | None = None, say=lambda _: None,
              memory_ceiling: float | None = None) -> dict:
    """Model-steps/s of K models in one ``run_steps`` against K, for each kind, and of one model.

    ``base``: the single model (its batch size and learning rate); ``scan_steps(k)``:
    steps per fused call for K models. Sizes run in increasing K with the kinds
    interleaved, so a spent ``budget`` skips the largest K of every kind alike.
    Each row also has the memory traffic its steps make (``_traffic``). With several local
    devices each (K, kind) is also measured split over as many as divide K (on CPU,
    ``parallel.use_cpu_devices`` gives one per core); ``devices`` says which.
    Returns {'single': row, 'rows': [row per (K, kind, devices)],
    'skipped': [{'kind', 'k', 'devices'}]}.
    """
    n, b = data.train_images.shape[0], base.batch_size
    say(f"single model, batch {b} ...")
    state, _, orders = loop.init_run(paths.two_epochs(base, n), n)
    timed = paths.make_loop("fused", state, host={}, data=data, orders=orders, batch_size=b,
                            scan_steps=scan_steps(1))
    m = measure(timed, **timing)
    del timed, state, orders
    single = {"hidden": list(base.hidden), "batch_size": b, **m,
              "model_steps_per_s": m["steps_per_s"]["median"],
              **_traffic(paths.two_epochs(base, n), data, m["steps_per_s"]["median"], memory_ceiling)}
    rows, skipped = [], []
    local = jax.local_devices()
    for k in sorted(sizes):
        for kind in kinds:
            # On one device, and where there are several, also split over as many as divide K.
            for d in sorted({1, parallel.split_count(k, len(local))}):
                if budget is not None and budget.spent():
                    skipped.append({"kind": kind, "k": k, "devices": d})
                    continue
                over = f" over {d} devices" if d > 1 else ""
                say(f"ensemble of {k} {kind.replace('_', ' ')}{over}, batch {b} ...")
                config = paths.ensemble_config(kind, k, base, num_examples=n)
                timed = paths.make_ensemble_loop(config, data=data, scan_steps=scan_steps(k),
                                                 devices=local[:d] if d > 1 else None)
                m = measure(timed, **timing)
                del timed
                rows.append(_ensemble_row(kind, k, d, base, m, single, config, data, memory_ceiling))
    return {"single": single, "rows": rows, "skipped": skipped}


def _ensemble_row(kind, k, devices, base, m, single, config, data, memory_ceiling) -> dict:
    msps = m["steps_per_s"]["median"] * k
    return {"kind": kind, "k": k, "devices": devices, "hidden": list(base.hidden),
            "batch_size": base.batch_size, **m,
            "model_steps_per_s": msps,
            "vs_single": ratio(msps, single["model_steps_per_s"]),
            "peak_device_bytes": peak_device_bytes(),
            **_traffic(config, data, m["steps_per_s"]["median"], memory_ceiling)}


def best_ensembles(rows: list[dict], kinds) -> dict:
    """Per kind, the row with the most model-steps/s: {kind: {'k', 'devices',
    'model_steps_per_s', 'vs_single'}}, all None where none of that kind was measured."""
    keys = ("k", "devices", "model_steps_per_s", "vs_single")
    best = {kind: dict.fromkeys(keys) for kind in kinds}
    for r in rows:
        if (best[r["kind"]]["model_steps_per_s"] or 0) < r["model_steps_per_s"]:
            best[r["kind"]] = {key: r[key] for key in keys}
    return best
