"""Whole processes, timed from outside: ``scripts/train.py`` and the 2017 TF1 program.

Each measurement runs children and reads the JSON they leave. Run these
before the parent process touches an accelerator, which a child could not
share. Failures are reported in the result, never raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from jaxmlp.bench.measure import ratio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(ROOT, "scripts", "train.py")
# summary.json timings of a run, in the order they happen; write_seconds may be absent.
RUN_PARTS = ("startup_seconds", "compile_seconds", "train_seconds", "eval_seconds", "write_seconds")


def _child(cmd: list[str], json_path: str, timeout_s: float) -> tuple[dict | None, dict]:
    """Run ``cmd`` (cwd: the source checkout); returns (the JSON it wrote or None,
    {'process_seconds'} or {'error'})."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, {"error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    try:
        with open(json_path) as f:
            return json.load(f), {"process_seconds": wall}
    except (OSError, ValueError) as e:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        return None, {"error": f"exit {proc.returncode}: "
                               f"{lines[-1] if lines else type(e).__name__ + ': ' + str(e)}"}


def _train_cmd(*, dataset: str, manual_dir: str, data_dir: str, out: str, cache: str,
               steps: int | None = None, eval_every: int | None = None) -> list[str]:
    cmd = [sys.executable, TRAIN_SCRIPT, "--dataset", dataset, "--manual-dir", manual_dir,
           "--data-dir", data_dir, "--out", out, "--quiet", "--compile-cache", cache]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if eval_every is not None:
        cmd += ["--eval-every", str(eval_every), "--log-every", str(eval_every)]
    return cmd


def _missing(manual_dir: str) -> str | None:
    if not os.path.isfile(TRAIN_SCRIPT):
        return f"{TRAIN_SCRIPT} not found (needs a source checkout)"
    if not os.path.isdir(manual_dir):
        return f"manual dir {manual_dir} not found"
    return None


def measure_startup(*, dataset: str, manual_dir: str, steps: int = 100, timeout_s: float = 900) -> dict:
    """Seconds from process start to the first training step of ``scripts/train.py``.

    Two runs against one fresh TFDS data dir and compilation cache: cold (TFDS
    prepares ``dataset`` from the IDX files in ``manual_dir``, decodes, and XLA
    compiles) and warm (decoded-array cache and persistent compilation cache).
    The run's ``summary.json`` gives ``timings.startup_seconds`` (process start
    to data loaded) and ``compile_seconds``; the first step starts after both.
    """
    result = {"dataset": dataset, "manual_dir": manual_dir, "steps": steps}
    problem = _missing(manual_dir)
    if problem:
        return {**result, "error": problem}
    with tempfile.TemporaryDirectory(prefix="jaxmlp-startup-") as tmp:
        for which in ("cold", "warm"):
            out = os.path.join(tmp, which)
            cmd = _train_cmd(dataset=dataset, manual_dir=manual_dir, data_dir=os.path.join(tmp, "tfds"),
                             out=out, cache=os.path.join(tmp, "xla"),  # cold compiles, warm hits it
                             steps=steps, eval_every=steps)
            summary, info = _child(cmd, os.path.join(out, "summary.json"), timeout_s)
            if summary is None:
                result[which] = info
                continue
            t = summary["timings"]
            result[which] = {"first_step_seconds": t["startup_seconds"] + t["compile_seconds"],
                             "startup_seconds": t["startup_seconds"],
                             "compile_seconds": t["compile_seconds"], **info,
                             "data_source": summary.get("data", {}).get("source")}
    return result


def whole_run(*, dataset: str, manual_dir: str, data_dir: str | None = None, steps: int | None = None,
              repeats: int = 1, timeout_s: float = 3600, log=lambda _: None) -> dict:
    """The whole default run of ``scripts/train.py``, part by part, and the 2017 program's.

    First the data is prepared in ``data_dir`` (None: a fresh temporary one) by a
    child of its own, so both programs then read the same decoded arrays from
    jaxmlp's cache. jaxmlp runs on one fresh compilation cache: once cold (a
    first run's compile), then ``repeats`` times warm (every later run's, as
    ``scripts/train.py`` keeps its cache), alternating with ``repeats`` runs of
    the 2017 program, so a slow spell of the machine hits both alike. ``steps``
    (None: the default 10,000) applies to all runs.
    Returns {'jaxmlp': the median warm run's summary timings and process total,
    'jaxmlp_cold': the cold run's, 'original': the 2017 program's median run,
    each with 'process_seconds_runs' (every run), 'original_vs_jaxmlp'(_cold):
    process total ratios of those, ...}.
    """
    result = {"dataset": dataset, "manual_dir": manual_dir, "data_dir": data_dir, "steps": steps}
    problem = _missing(manual_dir)
    if problem:
        return {**result, "error": problem}
    with tempfile.TemporaryDirectory(prefix="jaxmlp-whole-run-") as tmp:
        data_dir = data_dir or os.path.join(tmp, "tfds")
        log(f"whole run: preparing {dataset} in {data_dir} ...")
        prepared = os.path.join(tmp, "prepared.json")
        report, info = _child(
            [sys.executable, "-c", _PREPARE, dataset, data_dir, manual_dir, prepared], prepared, timeout_s)
        result["prepare"] = {**(report or {}), **info}
        def ours(which: str, i: int) -> dict:
            log(f"whole run: scripts/train.py, default schedule, {which} compilation cache ...")
            out = os.path.join(tmp, f"{which}-{i}")
            summary, info = _child(_train_cmd(dataset=dataset, manual_dir=manual_dir, data_dir=data_dir,
                                              out=out, cache=os.path.join(tmp, "xla"), steps=steps),
                                   os.path.join(out, "summary.json"), timeout_s)
            if summary is None:
                return info
            t = summary["timings"]
            return {**{k: t[k] for k in RUN_PARTS if k in t}, "total_seconds": t.get("total_seconds"),
                    **info, "steps": summary.get("steps"),
                    "final_test_accuracy": summary.get("final_test_accuracy")}

        def original(i: int) -> dict:
            log("whole run: the 2017 TF1 program ...")
            path = os.path.join(tmp, f"original-{i}.json")
            report, info = _child(
                [sys.executable, "-m", "jaxmlp.bench.original", "--dataset", dataset, "--data-dir",
                 data_dir, "--manual-dir", manual_dir, "--steps", str(steps or 10_000), "--json", path],
                path, timeout_s)
            return {**(report or {}), **info}

        result["jaxmlp_cold"] = _median_run([ours("cold", 0)])
        warm, theirs = [], []
        for i in range(repeats):
            warm.append(ours("warm", i))
            theirs.append(original(i))
        result["jaxmlp"], result["original"] = _median_run(warm), _median_run(theirs)
    for key in ("jaxmlp", "jaxmlp_cold"):
        result[f"original_vs_{key}"] = ratio(result["original"].get("process_seconds"),
                                             result[key].get("process_seconds"))
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run with the median process time (of an even count, the slower middle one),
    with every run's time in 'process_seconds_runs'; the first error if any run failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    times = [r["process_seconds"] for r in runs]
    middle = sorted(runs, key=lambda r: r["process_seconds"])[len(runs) // 2]
    return {**middle, "process_seconds_runs": times}


# Loads (and if needed prepares) the dataset in a child, so the parent never imports TFDS.
_PREPARE = """
import json, sys, time
from jaxmlp import data, records
t0 = time.perf_counter()
d = data.load(sys.argv[1], data_dir=sys.argv[2], manual_dir=sys.argv[3], progress=False)
records.atomic_write_json(sys.argv[4], {"source": d.source, "seconds": time.perf_counter() - t0})
"""
