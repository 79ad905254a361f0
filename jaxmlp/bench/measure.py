"""One measurement, one JSON row: a training path at a batch size, or ensembles against K.

Both suites (``jaxmlp.bench.run`` and ``jaxmlp.bench.accelerator``) build
their rows here, so a row means the same in either.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax

from jaxmlp import loop, parallel
from jaxmlp.bench import paths
from jaxmlp.bench.timing import Budget, measure_side_by_side, peak_device_bytes, xla_cost
from jaxmlp.config import Config


def ratio(a, b):
    """a / b, or None where either is missing or zero."""
    return a / b if a and b else None


def name(hidden) -> str:
    """Hidden widths as one token, e.g. 200-100-60-30."""
    return "-".join(map(str, hidden))


def path_rows(variants: Sequence[str], state, *, hidden, host: dict, data: loop.Data, orders,
              batch_size: int, scan_steps: int, timing: dict, flops: float | None,
              ceiling: float | None, peak: float | None) -> list[dict]:
    """Steady-state throughput of each of ``variants``, each started from a copy of
    ``state`` (widths ``hidden``), timed in turns (``measure_side_by_side``): one row each.

    ``timing``: ``measure``'s keyword arguments; ``flops``: FLOPs per step;
    ``ceiling``/``peak``: FLOP/s to compare the achieved rate with.
    """
    loops = [paths.make_loop(variant, loop.copy_tree(state), host=host, data=data, orders=orders,
                             batch_size=batch_size, scan_steps=scan_steps) for variant in variants]
    results = measure_side_by_side(loops, **timing)
    del loops  # frees the paths' states (and float32 copy) before the next batch size
    rows = []
    for variant, m in zip(variants, results):
        rate = m["steps_per_s"]["median"]
        achieved = flops * rate if flops else None
        rows.append({"hidden": list(hidden), "batch_size": batch_size,
                     "variant": variant, **m, "examples_per_s": rate * batch_size,
                     "achieved_flops_per_s": achieved, "vs_ceiling": ratio(achieved, ceiling),
                     "vs_peak": ratio(achieved, peak)})
    return rows


def _step_bytes(config: Config, data: loop.Data) -> float | None:
    """XLA's count of bytes one step of ``config`` reads and writes."""
    return xla_cost(paths.one_step_program(config, data=data), "bytes accessed")


def _traffic(per_step: float | None, steps_per_s: float, memory_ceiling) -> dict:
    """``per_step`` bytes (``_step_bytes``) and the rate they make at ``steps_per_s``,
    against the measured ``memory_ceiling`` (bytes/s)."""
    rate = per_step * steps_per_s if per_step else None
    return {"xla_bytes_per_step": per_step, "achieved_bytes_per_s": rate,
            "vs_memory_ceiling": ratio(rate, memory_ceiling)}


def ensembles(base: Config, *, kinds, sizes, data: loop.Data, scan_steps: Callable[[int], int],
              timing: dict, budget: Budget | None = None, say=lambda _: None,
              memory_ceiling: float | None = None) -> dict:
    """Model-steps/s of K models in one ``run_steps`` against K, for each kind, and of one model.

    ``base``: the single model (its batch size and learning rate); ``scan_steps(k)``:
    steps per fused call for K models. For each K, in increasing order, every kind's
    ensemble and one model are timed in turns (``measure_side_by_side``), and each row's
    ``vs_single`` is against that model (``single_model_steps_per_s``); a spent ``budget``
    skips the largest K of every kind alike. Each row also has the memory traffic its
    steps make (``_traffic``). With several local devices each (K, kind) is also measured
    split over as many as divide K (on CPU, ``parallel.use_cpu_devices`` gives one per
    core); ``devices`` says which.
    Returns {'single': the first K's single-model row, 'rows': [row per (K, kind, devices)],
    'skipped': [{'kind', 'k', 'devices'}]}.
    """
    n, b = data.train_images.shape[0], base.batch_size
    single_config = paths.two_epochs(base, n)
    single_bytes = _step_bytes(single_config, data)  # the same for every K's single model

    def single_loop():
        state, _, orders = loop.init_run(single_config, n)
        return paths.make_loop("fused", state, host={}, data=data, orders=orders, batch_size=b,
                               scan_steps=scan_steps(1))

    def single_row(m):
        return {"hidden": list(base.hidden), "batch_size": b, **m,
                "model_steps_per_s": m["steps_per_s"]["median"],
                **_traffic(single_bytes, m["steps_per_s"]["median"], memory_ceiling)}

    single, rows, skipped = None, [], []
    local = jax.local_devices()
    for k in sorted(sizes):
        # On one device, and where there are several, also split over as many as divide K.
        group = [(kind, d) for kind in kinds for d in sorted({1, parallel.split_count(k, len(local))})]
        if budget is not None and budget.spent():
            skipped += [{"kind": kind, "k": k, "devices": d} for kind, d in group]
            continue
        say(f"ensembles of {k} ({', '.join(f'{kind} on {d}' for kind, d in group)} devices) "
            f"in turns with one model, batch {b} ...")
        configs = [paths.ensemble_config(kind, k, base, num_examples=n) for kind, _ in group]
        loops = [single_loop(), *(paths.make_ensemble_loop(c, data=data, scan_steps=scan_steps(k),
                                                           devices=local[:d] if d > 1 else None)
                                  for c, (_, d) in zip(configs, group))]
        one, *ms = measure_side_by_side(loops, **timing)
        del loops
        one = single_row(one)
        single = single or one
        rows += [_ensemble_row(kind, k, d, base, m, one, c, data, memory_ceiling)
                 for (kind, d), c, m in zip(group, configs, ms)]
    if single is None:  # no K was measured: one model alone
        single = single_row(measure_side_by_side([single_loop()], **timing)[0])
    return {"single": single, "rows": rows, "skipped": skipped}


def _ensemble_row(kind, k, devices, base, m, single, config, data, memory_ceiling) -> dict:
    msps = m["steps_per_s"]["median"] * k
    return {"kind": kind, "k": k, "devices": devices, "hidden": list(base.hidden),
            "batch_size": base.batch_size, **m,
            "model_steps_per_s": msps,
            "single_model_steps_per_s": single["model_steps_per_s"],
            "vs_single": ratio(msps, single["model_steps_per_s"]),
            "peak_device_bytes": peak_device_bytes(),
            **_traffic(_step_bytes(config, data), m["steps_per_s"]["median"], memory_ceiling)}


def best_ensembles(rows: list[dict], kinds) -> dict:
    """Per kind, the row with the most model-steps/s: {kind: {'k', 'devices',
    'model_steps_per_s', 'vs_single'}}, all None where none of that kind was measured."""
    keys = ("k", "devices", "model_steps_per_s", "vs_single")
    best = {kind: dict.fromkeys(keys) for kind in kinds}
    for r in rows:
        if (best[r["kind"]]["model_steps_per_s"] or 0) < r["model_steps_per_s"]:
            best[r["kind"]] = {key: r[key] for key in keys}
    return best
