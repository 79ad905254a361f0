"""docs/performance.md, rendered from the suites' JSON (never edited by hand)."""

from __future__ import annotations

from statistics import median

from jaxmlp.records import atomic_write_json as write_json  # noqa: F401  (the JSON's one writer)

LABELS = {
    "whole_run": "jaxmlp whole run, warm: `train_and_evaluate`, records written",
    "whole_run_cold": "jaxmlp whole run, cold: the process's first (compiles)",
    "plain_jax": "plain-JAX program: one jitted nested `lax.scan`",
    "original": "the 2017 program: TF1 graph, `feed_dict` per step",
    "fused": "fused: `loop.fused_steps`, training only",
    "plain_scan": "plain-JAX scan, training only",
    "host_fed": "host-fed: `train_step` per step from Python",
}

HOW = """\
How it is measured. Every contender runs in one call, on the same machine and arrays; each
repeat runs every contender once, the order rotated by one per repeat, so drift does not land
on one; figures are medians over repeats (range in brackets), ratios are ratios of medians.

- *Whole run*: `jaxmlp.run.train_and_evaluate` on the arrays, with an `out_dir` (history,
  summary and figures written), timed around the call in the benchmark's process; *warm*: after
  a first (*cold*) run there compiled its programs. Its parts: the run's `summary["timings"]`.
- *Plain-JAX program*: `jaxmlp.bench.plain.program`, pure `jnp` functions of a list of (W, b):
  init, data order, every step and every test-set evaluation in one jitted program (an outer
  `lax.scan` over evaluations, an inner one over steps), from host arrays to host metrics.
- *The 2017 program*: `jaxmlp.bench.original` (Görner's TF1 graph via `tf.compat.v1`,
  `feed_dict` per step, the batch's metrics read after each update) in a child process on
  the same arrays, timed from building the graph to closing the session: TensorFlow's import
  and reading the arrays are left out, as the whole run leaves out JAX's and the files'.
- *Fused, plain-JAX scan, host-fed*: training only, from jaxmlp's initial state and batches:
  `loop.fused_steps` (jaxmlp's chunk, with its per-step metrics), `jaxmlp.bench.plain.train`,
  and `train.train_step` called per step from Python on batches gathered on the host.
"""


def _value(c: dict, v: float) -> str:
    return f"{v:.2f} s" if c["unit"] == "s" else f"{v:,.0f} {c['unit']}"


def _median(c: dict) -> str:
    digits = 2 if c["unit"] == "s" else 0
    return f"{_value(c, c['median'])} ({c['min']:,.{digits}f}–{c['max']:,.{digits}f})"


def _accuracy(c: dict, key: str = "final_test_accuracy") -> str:
    v = sorted({round(r[key], 4) for r in c["runs"] if key in r})
    return "–".join(f"{x:.4f}" for x in v[:1] + v[1:][-1:])


def ratio_table(result: dict) -> list[str]:
    """The figures table's lines (the README's performance table is this one)."""
    rows = []
    for r in result["ratios"].values():
        target = "" if r["target"] is None else f"{'≤' if r['bound'] == 'max' else '≥'} {r['target']}×"
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        rows.append(f"| {r['what']} | **{r['value']:.2f}×** | {target} | {met} |")
    return ["| figure | value | target | met |", "|---|---|---|---|", *rows]


def _heading(result: dict, title: str) -> list[str]:
    env = result["environment"]
    return [f"## {title}: {env['backend']} ({env['device_kind']}, {env['cpu_count']} CPU cores), "
            f"{env['date']}", "",
            f"Data: {result['data']}. jax {env.get('jax')}, Python {env.get('python')}; "
            f"repeats: {result['config']['repeats']}.", ""]


def _default(result: dict) -> list[str]:
    cfg, cs = result["config"], result["contenders"]
    lines = _heading(result, "The seed run")
    lines += [f"The whole run: {cfg['steps']:,} steps of batch {cfg['batch_size']}, the test set "
              f"every {cfg['eval_every']} steps; the training-only contenders: "
              f"{cfg['fused_steps']:,} steps per call.", "", *ratio_table(result), "",
              "| contender | median (range) | final test accuracy | final training loss |",
              "|---|---|---|---|"]
    for name, c in cs.items():
        lines.append(f"| {LABELS.get(name, name)} | {_median(c)} | {_accuracy(c)} "
                     f"| {_accuracy(c, 'final_loss')} |")
    parts = [("start-up", "startup_seconds"), ("compile", "compile_seconds"),
             ("training and evaluation", "train_seconds"), ("writing records", "write_seconds")]
    runs = cs["whole_run"]["runs"]
    lines += ["", "The warm whole run's parts (median of each): " + ", ".join(
        f"{what} {median(r[k] for r in runs):.2f} s" for what, k in parts if k in runs[0]) + "."]
    if "original" in cs:
        runs = cs["original"]["runs"]
        lines[-1] += (f" The 2017 program's whole child process (TensorFlow {runs[0]['tensorflow']}:"
                      f" import, data, run): {median(r['process_seconds'] for r in runs):.1f} s.")
    return lines


def _accelerator(result: dict) -> list[str]:
    cfg, cs, rs = result["config"], result["contenders"], result["ratios"]
    lines = _heading(result, "Accelerator")
    lines += [f"{cfg['steps']:,} steps per call.", "",
              "| batch | fused | host-fed | fused / host-fed |", "|---|---|---|---|"]
    for b in cfg["batch_sizes"]:
        lines.append(f"| {b:,} | {_median(cs[f'fused_b{b}'])} | {_median(cs[f'host_fed_b{b}'])} "
                     f"| **{rs[f'fused_vs_host_fed_b{b}']['value']:.2f}×** |")
    lines += ["", "| seeds in one program (batch 100) | model-steps/s | / one model |", "|---|---|---|"]
    for k in cfg["ensemble_sizes"]:
        lines.append(f"| {k:,} | {_median(cs[f'ensemble_k{k}'])} "
                     f"| **{rs[f'ensemble_k{k}_vs_one']['value']:.2f}×** |")
    return lines


def render_markdown(*results: dict, sources=()) -> str:
    """docs/performance.md from one or more suite results (``sources``: their JSON paths)."""
    lines = []
    if sources:
        lines += [f"<!-- Rendered from {' '.join(sources)} by `python scripts/benchmark.py --render "
                  f"{' '.join(sources)} --markdown PATH`; do not edit by hand. -->", ""]
    lines += ["# Performance", ""]
    for result in results:
        lines += [*(_default(result) if result["suite"] == "default" else _accelerator(result)), ""]
    if any(r["suite"] == "default" for r in results):
        lines.append(HOW)
    return "\n".join(lines).rstrip() + "\n"
