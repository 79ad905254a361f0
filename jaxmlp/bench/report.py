"""Both suites' results as text tables, JSON and PNG figures (written atomically)."""

from __future__ import annotations

import os

import numpy as np

from jaxmlp import records
from jaxmlp.bench.measure import name
from jaxmlp.bench.paths import LABELS, VARIANTS


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


def _rate(x):
    """A rate to the unit, or to 3 significant digits below 100 (big batches run < 1 step/s)."""
    return format(x, ",.0f") if x >= 100 else format(x, ".3g")


def _num(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


# --- text ------------------------------------------------------------------------------------


def _header(result: dict, title: str) -> list[str]:
    env, ceil, peak = result["environment"], result["matmul_ceiling"], result["device_peak"]
    mem = result.get("memory_ceiling")
    v = env["versions"]
    return [f"{title}: {env['device_kind']} ({env['backend']}) x{env['device_count']}, "
            f"jax {v.get('jax')}, flax {v.get('flax')}, python {env['python']}",
            f"matmul ceiling (measured): {ceil['n']}x{ceil['n']} f32 matmul at default precision, "
            f"{_si(ceil['flops_per_s'], 'FLOP/s')} (best of {len(ceil['flops_per_s_stats']['values'])})",
            *([f"memory ceiling (measured): an elementwise pass over {_mib(mem['bytes'])} MiB f32, "
               f"{_si(mem['bytes_per_s'], 'B/s')} read + written (best of "
               f"{len(mem['bytes_per_s_stats']['values'])})"] if mem else []),
            ("published peak: " + (f"{peak['name']} {peak['precision'].upper()} dense "
                                   f"{_si(peak['flops_per_s'], 'FLOP/s')} (XLA's f32 matmul precision)"
                                   if peak else "none known for this device (CPU: see ceiling)"))]


def _path_lines(rows: list[dict]) -> list[str]:
    lines = ["throughput: steps/s median [min - max] of the repeats; FLOP/s = XLA FLOPs/step x steps/s",
             f"{'widths':<16}{'batch':>6}  {'path':<24}{'steps/s':>9}  {'[min - max]':<19}"
             f"{'examples/s':>11}{'FLOP/s':>12}{'%ceil':>7}{'%peak':>7}"]
    for r in rows:
        s = r["steps_per_s"]
        spread = f"[{_rate(s['min'])} - {_rate(s['max'])}]"
        lines.append(f"{name(r['hidden']):<16}{r['batch_size']:>6}  "
                     f"{LABELS[r['variant']]:<24}{_rate(s['median']):>9}  {spread:<19}"
                     f"{r['examples_per_s']:>11,.0f}{_si(r['achieved_flops_per_s']):>12}"
                     f"{_pct(r['vs_ceiling']):>7}{_pct(r['vs_peak']):>7}")
    return lines


def _ensemble_lines(single: dict, rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"ensembles (vmap over K models, batch {single['batch_size']}, widths "
                 f"{name(single['hidden'])}): each K timed in turns with one model ('one': its "
                 "model-steps/s, the base of 'x one'); seeds = K seeds at one lr, learning_rates "
                 "= one seed at K lrs",
             "memory: XLA's count of bytes one train step reads and writes (batch given) x "
             "steps/s, and its share of the measured memory ceiling",
             f"{'K':>5}  {'kind':<15}{'dev':>4}{'scan':>6}{'steps/s':>10}{'model-steps/s':>15}{'one':>8}{'x one':>7}"
             f"{'peak MiB':>10}{'MB/step':>10}{'memory B/s':>12}{'%mem':>6}"]
    for e in [{**single, "k": 1, "kind": "one model", "devices": 1, "vs_single": 1.0,
               "single_model_steps_per_s": single["model_steps_per_s"], "peak_device_bytes": None}, *rows]:
        per_step = e.get("xla_bytes_per_step")
        lines.append(f"{e['k']:>5}  {e['kind']:<15}{e.get('devices', 1):>4}{e['steps_per_call']:>6}"
                     f"{_rate(e['steps_per_s']['median']):>10}{e['model_steps_per_s']:>15,.0f}"
                     f"{e['single_model_steps_per_s']:>8,.0f}{_num(e['vs_single']):>7}"
                     f"{_mib(e['peak_device_bytes']):>10}"
                     f"{_num(per_step and per_step / 1e6, '.1f'):>10}"
                     f"{_si(e.get('achieved_bytes_per_s'), 'B/s'):>12}"
                     f"{_pct(e.get('vs_memory_ceiling')):>6}")
    return lines


def _ratio_lines(ratios: dict, title: str) -> list[str]:
    lines = ["", title]
    for r in ratios.values():
        value = "not measured" if r["value"] is None else f"{r['value']:.2f}"
        if r["target"] is None:
            verdict = ""
        elif not r["applies"]:
            verdict = f"(target >= {r['target']:g} is for another backend/K)"
        else:
            verdict = f"target >= {r['target']:g}: " + {True: "met", False: "NOT met", None: "-"}[r["met"]]
        lines.append(f"  {r['what']:<56}{value:>13}  {verdict}")
    return lines


def _process_lines(result: dict) -> list[str]:
    """Time to first step and the whole run, where measured."""
    lines, st, wr = [], result.get("startup"), result.get("whole_run")
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
    if wr:
        lines += ["", f"whole run, {wr['dataset']} ({wr['steps'] or 10_000} steps; data prepared first; "
                      "jaxmlp's compilation cache cold, then warm), seconds"]
        if "error" in wr:
            lines.append(f"  not measured: {wr['error']}")
        ours = ("startup", "compile", "train", "eval", "write", "total")
        for who, parts in (("jaxmlp_cold", ours), ("jaxmlp", ours),
                           ("original", ("import", "data", "setup", "train", "eval", "total"))):
            w = wr.get(who, {})
            if "error" in w:
                lines.append(f"  {who}: not measured: {w['error']}")
            elif w:
                detail = ", ".join(f"{p} {w[p + '_seconds']:.1f}" for p in parts
                                   if w.get(p + "_seconds") is not None)
                runs = w.get("process_seconds_runs", [])
                spread = (f" (median of {', '.join(f'{t:.1f}' for t in runs)})"
                          if len(runs) > 1 else "")
                lines.append(f"  {who:<12}process {w['process_seconds']:.1f}{spread} ({detail}); "
                             f"final test accuracy {_num(w.get('final_test_accuracy'), '.4f')}")
        for key, which in (("original_vs_jaxmlp_cold", "cold"), ("original_vs_jaxmlp", "warm")):
            if wr.get(key):
                lines.append(f"  the 2017 program takes {wr[key]:.2f}x jaxmlp's process time ({which})")
    return lines


def format_table(result: dict) -> str:
    """The default suite as text: environment, per-path throughput, per-config costs, ensembles, ratios."""
    lines = _header(result, "jaxmlp benchmark") + [""] + _path_lines(result["rows"])
    lines += ["", "per configuration: FLOPs/step from XLA (one-step program) against 6*B*W and against the "
                  "exact matmul count (mm: no gradient for the images);",
              "the step's own matmuls timed alone (mm FLOP/s: a ceiling at this network's shapes); "
              "compile of the fused program, cold and warm (persistent cache hit?); program and peak "
              "device memory",
              f"{'widths':<16}{'batch':>6}{'scan':>6}{'XLA FLOP':>11}{'6BW':>11}{'/6BW':>6}{'/mm':>6}"
              f"{'mm FLOP/s':>11}{'cold s':>8}{'warm s':>8}{'hit':>5}{'prog MiB':>10}{'peak MiB':>10}"]
    for c in result["configs"]:
        a, xla = c["analytic_flops"], c["xla_flops_per_step"] or 0
        lines.append(f"{name(c['hidden']):<16}{c['batch_size']:>6}{c['scan_steps']:>6}"
                     f"{_si(c['xla_flops_per_step']):>11}{_si(a['six_bw']):>11}"
                     f"{xla / a['six_bw']:>6.2f}{xla / a['matmul']:>6.2f}"
                     f"{_si(c.get('step_matmuls', {}).get('flops_per_s')):>11}"
                     f"{_secs(c.get('compile_cold_s')):>8}{_secs(c.get('compile_warm_s')):>8}"
                     f"{'-' if 'warm_cache_hits' not in c else 'yes' if c['warm_cache_hits'] else 'no':>5}"
                     f"{_mib(c['program_bytes']):>10}{_mib(c['peak_device_bytes']):>10}")
    lines += _ensemble_lines(result["ensemble_single"], result["ensembles"])
    lines += _ratio_lines(result["ratios"], "ratios (same run)")
    lines += _process_lines(result)
    lines.append(f"\nbenchmark wall time {result['wall_seconds']:.1f} s")
    return "\n".join(lines)


def _skipped(part: dict) -> list[str]:
    if not part["skipped"]:
        return []
    return [f"  skipped (budget {part['budget_seconds']:.0f} s spent): {part['skipped']}"]


def _schedule_line(label: str, s: dict) -> str:
    if s["skipped"]:
        return f"{label}: skipped: {s['skipped']}"
    acc = s["accuracy"]
    accuracy = (f"final test accuracy {s['final_test_accuracy']:.4f}" if acc is None else
                f"final test accuracy mean {acc['mean']:.4f} +- {acc['std']:.4f} "
                f"[{acc['min']:.4f} - {acc['max']:.4f}], median {acc['percentiles']['50']:.4f}, "
                f"over the {s['models'] - acc['diverged']} that did not diverge ({acc['diverged']} did)")
    return (f"{label}: {s['models']} x {s['steps']:,} steps of batch {s['batch_size']}, test set every "
            f"{s['eval_every']}: {s['wall_seconds']:.1f} s (compile {_num(s['compile_seconds'], '.1f')}, "
            f"train {_num(s['train_seconds'], '.1f')}, eval {_num(s['eval_seconds'], '.1f')}), "
            f"{_si(s['model_steps_per_s'])} model-steps/s in training; {accuracy}")


def format_accelerator(result: dict) -> str:
    """The accelerator suite as text, part by part."""
    lines = _header(result, "jaxmlp accelerator suite") + ["", "(a) every path, batch "
                                                           f"{result['config']['path_batch_size']}"]
    lines += _path_lines(result["paths"]["rows"])
    sweep = result["batch_sweep"]
    lines += ["", "(b) batch sweep"] + _path_lines(sweep["rows"]) + _skipped(sweep)
    ens = result["ensembles"]
    lines += ["", "(c)"] + _ensemble_lines(ens["single"], ens["rows"])[1:] + _skipped(ens)
    lines += [f"  best {kind}: K={b['k']} on {b['devices']} device(s), {_num(b['vs_single'])}x one model"
              for kind, b in ens["best"].items() if b["k"] is not None]
    lines += ["", "data for (d) and (e): " + result["data"]["source"],
              _schedule_line("(d) the seed schedule", result["seed_schedule"]),
              _schedule_line("(e) seeds as one ensemble", result["seed_ensemble"])]
    lines += _ratio_lines(result["targets"], "targets (same run)")
    lines.append(f"\nsuite wall time {result['wall_seconds']:.1f} s")
    return "\n".join(lines)


# --- files --------------------------------------------------------------------------------


def write_json(result: dict, path: str) -> None:
    """``result`` as JSON, written atomically (``records.atomic_write_json``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    records.atomic_write_json(path, result)


def _save(fig, path: str) -> None:
    from jaxmlp.plot import png_bytes

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    records.atomic_write_bytes(path, png_bytes(fig))


def _figure(width: float, height: float, rows: int, cols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, cols).ravel()


def _draw_batch_sweep(ax, rows: list[dict], device_kind: str, widths=None) -> None:
    widths = widths or sorted({tuple(r["hidden"]) for r in rows})
    for i, hidden in enumerate(widths):  # the first width solid, others dashed
        for variant in VARIANTS:
            pts = sorted((r["batch_size"], r["examples_per_s"]) for r in rows
                         if r["variant"] == variant and tuple(r["hidden"]) == tuple(hidden))
            if pts:
                label = LABELS[variant] + ("" if len(widths) == 1 else f" ({name(hidden)})")
                ax.plot(*zip(*pts), "-" if i == 0 else "--", marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="examples / s",
           title=f"training throughput, {device_kind}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _draw_ensembles(ax, single: dict, rows: list[dict]) -> None:
    if not rows:
        ax.set_axis_off()
        return
    for kind, d in sorted({(r["kind"], r.get("devices", 1)) for r in rows}):
        pts = sorted((r["k"], r["model_steps_per_s"]) for r in rows
                     if r["kind"] == kind and r.get("devices", 1) == d)
        ax.plot(*zip(*pts), marker="o", linestyle="-" if d == 1 else "--",
                label=kind.replace("_", " ") + (f", over {d} devices" if d > 1 else ""))
    one = {r["k"]: r["single_model_steps_per_s"] for r in rows}
    ks = sorted(one)
    ax.plot(ks, [one[k] * k for k in ks], ":", color="grey",
            label="K x one model timed with them (linear)")
    ax.set(xscale="log", yscale="log", xlabel="models K", ylabel="model-steps / s",
           title=f"ensembles, batch {single['batch_size']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot(result: dict, path: str) -> None:
    """Default suite: examples/s against batch size per path (log-log), model-steps/s against K."""
    fig, (ax, ax_k) = _figure(12, 4.8, 1, 2)
    _draw_batch_sweep(ax, result["rows"], result["environment"]["device_kind"],
                      [tuple(h) for h in result["config"]["hidden"]])
    _draw_ensembles(ax_k, result["ensemble_single"], result["ensembles"])
    fig.tight_layout()
    _save(fig, path)


COLLAPSED_BELOW = 0.2  # final test accuracy under twice chance: a member that never learned


def plot_accelerator(result: dict, path: str) -> None:
    """Accelerator suite: (a) paths, (b) batch sweep, (c) ensembles, (e) final accuracy histogram."""
    fig, (ax_a, ax_b, ax_c, ax_e) = _figure(13, 9, 2, 2)
    rows = result["paths"]["rows"]
    ax_a.barh([LABELS[r["variant"]] for r in rows], [r["steps_per_s"]["median"] for r in rows])
    ax_a.set(xscale="log", xlabel="steps / s",
             title=f"(a) every path, batch {result['config']['path_batch_size']}")
    ax_a.grid(True, axis="x", which="both", alpha=0.3)
    _draw_batch_sweep(ax_b, result["batch_sweep"]["rows"], result["environment"]["device_kind"])
    ax_b.set_title("(b) " + ax_b.get_title())
    _draw_ensembles(ax_c, result["ensembles"]["single"], result["ensembles"]["rows"])
    ax_c.set_title("(c) " + ax_c.get_title())
    e, d = result["seed_ensemble"], result["seed_schedule"]
    if e["skipped"]:
        ax_e.text(0.5, 0.5, f"(e) skipped:\n{e['skipped']}", ha="center", va="center", wrap=True)
        ax_e.set_axis_off()
    else:
        final = np.asarray([np.nan if v is None else v for v in e["final_test_accuracy"]], float)
        final = final[np.isfinite(final)]
        # Members that collapsed to about chance (10 classes) would squash the others' bins.
        learned = final[final >= COLLAPSED_BELOW]
        ax_e.hist(learned, bins=min(50, max(5, learned.size // 10)))
        if not d["skipped"]:
            ax_e.axvline(d["final_test_accuracy"], color="black", linestyle="--", label="(d) one run")
            ax_e.legend(fontsize=8)
        ax_e.set(xlabel="final test accuracy", ylabel="models",
                 title=f"(e) {e['models']} seeds, {e['steps']:,} steps each, on {result['data']['source']}\n"
                       f"not shown: {e['accuracy']['diverged']} diverged, "
                       f"{final.size - learned.size} below {COLLAPSED_BELOW:g} (collapsed)")
    fig.tight_layout()
    _save(fig, path)
