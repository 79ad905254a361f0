"""The README's code examples run as written, given arrays for the names they leave open."""

import re

import numpy as np

from conftest import ROOT, synthetic


def test_readme_python_examples_run_and_the_cnn_learns():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2, "the README's two code examples (the MLP, a user CNN) changed"
    data = synthetic()  # learnable digits: class c lights rows 2c..2c+1
    names = {"images_u8": data.train_images[:100], "labels": data.train_labels[:100],
             "test_images": data.test_images, "test_labels": data.test_labels}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), names)
    assert int(names["state"].step) == 1
    assert 0.0 <= float(names["test"]["accuracy"]) <= 1.0 and np.isfinite(float(names["test"]["loss"]))
    # The user-defined CNN trained with Adam through the same step: 30 updates on 100 images
    # generalise to the 303 test images (chance is 0.1).
    assert int(names["cnn"].step) == 30
    assert float(names["cnn_test"]["accuracy"]) >= 0.9, names["cnn_test"]


def test_readme_whole_run_figures_are_the_committed_benchmarks():
    """The README's whole-run row and its two ratios against the 2017 program are read from
    docs/benchmark-cpu.json, the benchmark committed with them. Catches a README left with
    an earlier call's figures after the JSON was rerun, or the other way round."""
    import json

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    whole = json.loads((ROOT / "docs" / "benchmark-cpu.json").read_text())["whole_run"]
    warm = re.search(r"takes \*\*([\d.]+)×\*\* jaxmlp's process time warm", text)
    cold = re.search(r"met\) and ([\d.]+)× cold", text)
    row = re.search(r"\| jaxmlp, warm compilation cache \| \*\*([\d.]+)\*\* \(([\d.]+)–([\d.]+)\)", text)
    assert warm and cold and row, "the README's whole-run sentence or table changed shape"
    assert float(warm.group(1)) == round(whole["original_vs_jaxmlp"], 2)
    assert float(cold.group(1)) == round(whole["original_vs_jaxmlp_cold"], 2)
    runs = whole["jaxmlp"]["process_seconds_runs"]
    assert [float(g) for g in row.groups()] == [round(v, 1) for v in
                                                (whole["jaxmlp"]["process_seconds"], min(runs), max(runs))]
    # The sentence on the three targets: each figure and whether it is met.
    flat = re.sub(r"\s+", " ", text)
    m = whole["jaxmlp"]
    for what, value, target, digits in (("the whole process took", m["process_seconds"], "12", 1),
                                        ("start-up", m["startup_seconds"], "1.5", 2),
                                        ("records and figures (`write`)", m["write_seconds"], "1.0", 2)):
        met = "met" if round(value, digits) <= float(target) else "not met"
        assert f"{what} {value:.{digits}f} s (target ≤ {target} s: {met})" in flat, what


_PATH_LABELS = {"fused": "fused scan, uint8 data (jaxmlp)", "fused_f32": "fused scan, float32 data",
                "fused_unroll": "fused, scan unrolled ×8", "fused_after": "fused, metrics after the update",
                "plain_jax": "plain-JAX scan", "device_step": "per-step, device data",
                "host_fed": "per-step, host-fed", "nnx_jit": "nnx.jit per-step"}


def _sections():
    """The README's CPU and GPU performance text, each with its committed benchmark."""
    import json

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    perf = text[text.index("## Performance"):]
    cpu, gpu = perf[:perf.index("**On a GPU**")], perf[perf.index("**On a GPU**"):]
    read = lambda name: json.loads((ROOT / "docs" / name).read_text())
    return cpu, read("benchmark-cpu.json"), gpu, read("benchmark-h200.json")


def _row(text: str, label: str) -> list[str]:
    """The cells after ``label`` in the markdown table row that starts with it."""
    found = re.findall(rf"^ *\| {re.escape(label)} \|(.*)\|$", text, re.M)
    assert len(found) == 1, f"no single table row {label!r}"
    return [c.strip().strip("*").replace(",", "") for c in found[0].split("|")]


def _has(text: str, pattern: str, *values) -> None:
    """``pattern`` (a regex with one group per value) reads ``values`` in ``text``."""
    m = re.search(pattern, text)
    assert m, f"the README no longer says {pattern!r}"
    assert list(m.groups()) == [str(v) for v in values], (pattern, m.groups(), values)


def test_readme_cpu_figures_are_the_committed_benchmark():
    """Every figure of the README's CPU tables and their bullets is read from
    docs/benchmark-cpu.json. Catches a table left with an earlier call's figures."""
    text, d, _, _ = _sections()
    rows = {(r["variant"], r["batch_size"]): r for r in d["rows"]}
    for variant, label in _PATH_LABELS.items():
        want = []
        for b in (100, 1000):
            r = rows[variant, b]
            want += [f"{r['steps_per_s']['median']:.0f}", f"{r['achieved_flops_per_s'] / 1e9:.0f}"]
        assert _row(text, label) == want, label
    ratio = {k: f"{v['value']:.2f}" for k, v in d["ratios"].items()}
    _has(text, r"fused / plain-JAX \*\*([\d.]+)\*\*", ratio["fused_vs_plain_jax"])
    _has(text, r"fused / nnx.jit \*\*([\d.]+)\*\*", ratio["fused_vs_nnx_jit"])
    _has(text, r"float32 / uint8 data ([\d.]+)", ratio["f32_vs_uint8"])
    _has(text, r"runs at ([\d.]+)× the training throughput", ratio["after_vs_before"])
    step_mm = {c["batch_size"]: c["step_matmuls"]["flops_per_s"] / 1e9 for c in d["configs"]}
    _has(text, r"matmul runs at (\d+) GFLOP/s and an elementwise pass over\s+256 MiB moves ([\d.]+) GB/s",
         f"{d['matmul_ceiling']['flops_per_s'] / 1e9:.0f}", f"{d['memory_ceiling']['bytes_per_s'] / 1e9:.1f}")
    _has(text, r"run at (\d+)\s+GFLOP/s \(batch 1,000\)", f"{step_mm[1000]:.0f}")
    _has(text, r"reaches (\d+) GFLOP/s, ([\d.]+) of the first and ([\d.]+) of\s+the second",
         f"{rows['fused', 1000]['achieved_flops_per_s'] / 1e9:.0f}", ratio["flops_vs_ceiling"],
         ratio["flops_vs_step_matmuls"])
    _has(text, r"own matmuls alone\s+run at (\d+) GFLOP/s and the fused step at (\d+)",
         f"{step_mm[100]:.0f}", f"{rows['fused', 100]['achieved_flops_per_s'] / 1e9:.0f}")

    ens = {(r["kind"], r["k"], r["devices"]): r for r in d["ensembles"]}
    _has(text, r"against one model timed in turns with them \(([\d,]+)\)",
         f"{ens['seeds', 8, 1]['single_model_steps_per_s']:,.0f}")
    for kind, label in (("seeds", "seeds"), ("learning_rates", "learning rates (each batch gathered once)")):
        cells = [re.match(r"[\d.]+", c).group() for c in _row(text, label)]
        assert cells == [f"{ens[kind, 8, n]['vs_single']:.2f}" for n in (1, 2)], label
    _has(text, r"already runs at ([\d.]+)× \(seeds\) and ([\d.]+)× \(learning rates\)",
         *(f"{ens[kind, 1, 1]['vs_single']:.2f}" for kind in ("seeds", "learning_rates")))
    use = sorted(r["vs_memory_ceiling"] for r in d["ensembles"] if r["k"] == 8)
    _has(text, r"The K = 8 steps use (\d+)–(\d+)%", *(f"{100 * v:.0f}" for v in (use[0], use[-1])))

    whole = d["whole_run"]
    for key, label in (("jaxmlp", "jaxmlp, warm compilation cache"), ("jaxmlp_cold", "jaxmlp, cold compilation cache")):
        w = whole[key]
        cells = _row(text, label)
        assert re.match(r"[\d.]+", cells[0]).group() == f"{w['process_seconds']:.1f}", label
        assert cells[1:5] == [f"{w[k]:.1f}" for k in ("startup_seconds", "compile_seconds",
                                                       "train_seconds")] + [f"{w['eval_seconds']:.2f}"], label
        assert cells[5:] == [f"{w['write_seconds']:.1f}", f"{w['final_test_accuracy']:.4f}"], label
    o = whole["original"]
    assert _row(text, "the 2017 program (`tf.compat.v1`)") == [
        f"{o['process_seconds']:.1f} ({min(o['process_seconds_runs']):.1f}–{max(o['process_seconds_runs']):.1f})",
        f"{o['import_seconds']:.1f} (import) + {o['data_seconds']:.1f} (data)", "",
        f"{o['train_seconds']:.1f}", f"{o['eval_seconds']:.1f}", "", f"{o['final_test_accuracy']:.4f}"]


def test_readme_gpu_table_is_the_committed_benchmark():
    """The README's H200 paths table and its two targets are read from docs/benchmark-h200.json."""
    _, _, text, d = _sections()
    rows = {r["variant"]: r for r in d["paths"]["rows"] if r["batch_size"] == 100}
    for variant, label in _PATH_LABELS.items():
        if variant != "fused_f32":  # not in the GPU table
            assert _row(text, label) == [f"{rows[variant]['steps_per_s']['median']:.0f}"], label
    _has(text, r"fused / host-fed per-step \*\*([\d.]+)×\*\*", f"{d['targets']['fused_vs_host_fed']['value']:.1f}")
    _has(text, r"model-steps/s, \*\*([\d.]+)×\*\* one model", f"{d['targets']['ensemble_vs_single']['value']:.1f}")
    # The CPU bullet on unrolling quotes this table's ratio, and says it does not help on CPU.
    cpu_text, cpu, _, _ = _sections()
    _has(_flat(cpu_text), r"not faster here, ([\d.]+)× on the H200 below",
         f"{rows['fused_unroll']['steps_per_s']['median'] / rows['fused']['steps_per_s']['median']:.2f}")
    cpu_rows = {r["variant"]: r["steps_per_s"]["median"] for r in cpu["rows"] if r["batch_size"] == 100}
    assert cpu_rows["fused_unroll"] / cpu_rows["fused"] < 1.05, "unrolling is faster on CPU now: say so"


def _flat(text: str) -> str:
    """``text`` with every run of whitespace as one space: a reflowed paragraph reads the same."""
    return re.sub(r"\s+", " ", text)


def _pm(s: dict, digits: int) -> str:
    """A ladder spread as ladder.md writes it: mean ± sample std."""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _ladder() -> dict:
    """docs/ladder-fashion-mnist.json, its rungs in the ladder's order (the file's keys are sorted)."""
    import json

    d = json.loads((ROOT / "docs" / "ladder-fashion-mnist.json").read_text())
    d["rungs"] = {name: d["rungs"][name] for name in d["presets"]}
    return d


def test_readme_ladder_table_is_the_committed_ladder():
    """Every cell of the README's ladder table, the rungs in order, and the seeds, steps and
    batch it states are read from docs/ladder-fashion-mnist.json, and the docs/*.md it links
    is that JSON's own rendering. Catches a README table or ladder.md left with an earlier
    ladder's figures after the JSON was rerun (or a rung dropped, or a seed lost)."""
    from jaxmlp import ladder

    d = _ladder()
    md = (ROOT / "docs" / "ladder-fashion-mnist.md").read_text(encoding="utf-8")
    assert md == ladder.markdown(d), "docs/ladder-fashion-mnist.md is not docs/ladder-fashion-mnist.json"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Görner's ladder"):text.index("## Fidelity")]
    table = section[section.index("| rung | final test accuracy |"):].split("\n\n")[0]
    rows = re.findall(r"^\| ([\w-]+) \|", table, re.M)
    assert rows == ["rung", *d["presets"]], "the README's ladder table has other rungs than the committed ladder"
    for name, r in d["rungs"].items():
        assert _row(section, name) == [_pm(r["final_test_accuracy"], 4), _pm(r["best_test_accuracy"], 4),
                                       _pm(r["final_test_loss"], 3), r["gorner_mnist_accuracy"]], name
        assert r["steps"] == d["steps"] and not r["diverged"], name
        assert all(r[m]["n"] == len(d["seeds"]) for m in ("final_test_accuracy", "best_test_accuracy",
                                                          "final_test_loss")), name
    flat = _flat(section)
    _has(flat, r"The talk climbs a ladder of programs, each ([\d,]+) steps of batch (\d+)\.",
         f"{d['steps']:,}", d["batch_size"])
    _has(flat, r"Measured here on (\S+) \(Debian's files\), (\d+) seeds, mean ± std",
         {"fashion_mnist": "Fashion-MNIST"}.get(d["dataset"], d["dataset"]), len(d["seeds"]))


def test_readme_ladder_remarks_hold_in_the_committed_ladder():
    """The two remarks under the README's ladder figure, in the committed ladder: the softmax
    rung swings most (the widest spread over seeds and the largest fall from its best to its
    final accuracy), and dropout ends below the same rung without it."""
    text = _flat((ROOT / "README.md").read_text(encoding="utf-8"))
    assert ("On Fashion-MNIST the softmax rung swings widely at its learning rate, and dropout does "
            "slightly worse than the same rung without it.") in text
    rungs = _ladder()["rungs"]
    spread = {n: r["final_test_accuracy"]["std"] for n, r in rungs.items()}
    fall = {n: r["best_test_accuracy"]["mean"] - r["final_test_accuracy"]["mean"] for n, r in rungs.items()}
    assert max(spread, key=spread.get) == "softmax" and max(fall, key=fall.get) == "softmax"
    for metric in ("final_test_accuracy", "best_test_accuracy"):
        assert rungs["relu-lrdecay-dropout"][metric]["mean"] < rungs["relu-lrdecay"][metric]["mean"], metric


def test_readme_expected_result_is_the_committed_ladders_relu_row():
    """The README's "Expected result" figures for Fashion-MNIST are the committed ladder's
    relu rung (seeds, final and best test accuracy), and that rung ran the seed experiment's
    schedule. Catches the paragraph left behind when the ladder is rerun."""
    from jaxmlp.config import Config

    d = _ladder()
    relu = d["rungs"]["relu"]
    text = _flat((ROOT / "README.md").read_text(encoding="utf-8"))
    _has(text, r"Fashion-MNIST at the same schedule, measured here: see \[Görner's ladder\]\(#görners-ladder\) "
               r"\(`relu` row, (\d+) seeds: final test accuracy ([\d.]+) ± ([\d.]+), best ([\d.]+) ± ([\d.]+)\)",
         len(d["seeds"]), *_pm(relu["final_test_accuracy"], 4).split(" ± "),
         *_pm(relu["best_test_accuracy"], 4).split(" ± "))
    _has(text, r"test accuracy just under 98% after ([\d,]+) steps", f"{relu['steps']:,}")
    seed = Config()  # the seed experiment
    assert relu["config"]["preset"] == seed.preset == "relu" and d["dataset"] == "fashion_mnist"
    for field in ("steps", "batch_size", "eval_every", "learning_rate", "optimizer", "activation"):
        assert relu["config"][field] == getattr(seed, field), field
    assert relu["config"]["hidden"] == list(seed.hidden)


_ORDINAL = {"sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10}


def test_readme_fidelity_figures_are_docs_fidelity():
    """The README's across-seeds fidelity figures (seeds, split, metrics, both sides' final
    test accuracy over the runs that did not collapse, their counts, Welch's t and p, the
    collapsed original run, the 398 held-out images) are read from docs/fidelity.md, the
    report scripts/fidelity.py writes (it writes no JSON), and that report's summary row
    agrees with its per-seed table. Catches a README left with an earlier report's figures."""
    doc = (ROOT / "docs" / "fidelity.md").read_text(encoding="utf-8")
    src = re.search(r"^(\d+) seeds of each, ([\d,]+) steps of batch (\d+) on Fashion-MNIST \(`([^`]+)`: "
                    r"[\d,]+ training images, `test`: [\d,]+ test images\), minibatch metrics read after "
                    r"each update on both sides\.", doc, re.M)
    assert src, "docs/fidelity.md's opening sentence changed shape"
    seeds, split = int(src.group(1)), src.group(4)
    cells = _row(doc, "final test accuracy, runs that did not collapse")
    acc = [re.fullmatch(r"([\d.]+) ± ([\d.]+) \(n=(\d+)\)", c) for c in cells[:2]]
    welch = re.fullmatch(r"(-?[\d.]+) \([\d.]+\)", cells[2])
    assert all(acc) and welch and re.fullmatch(r"[\d.]+", cells[3]), cells
    blew = re.findall(r"^Original seed (\d+): first blew up at step (\d+) ", doc, re.M)
    assert re.search(rf"Collapsed runs .*: jaxmlp 0 of {seeds}, original {len(blew)} of {seeds}\.", doc)
    assert len(blew) == 1, "the README speaks of one collapsed original run"
    per_seed = {int(s): (float(a), float(b)) for s, a, b in
                re.findall(r"^\| (\d+) \| (0\.\d{4}) \| (0\.\d{4}) \|$", doc, re.M)}
    assert sorted(per_seed) == list(range(seeds)) and per_seed[int(blew[0][0])][1] == 0.1  # chance
    overlap = re.search(r"Of the IDX file's first 5,000 training images, (\d+) are among TFDS's first "
                        r"5,000 of `train`", doc)
    assert overlap, "docs/fidelity.md no longer counts the held-out images both ways share"

    # The summary row is the per-seed table's (its 4 digits, so within rounding).
    for side, m in enumerate(acc):
        kept = [v[side] for v in per_seed.values() if v[side] >= 0.2]  # fidelity.py's COLLAPSED_BELOW
        assert int(m.group(3)) == len(kept)
        assert abs(float(np.mean(kept)) - float(m.group(1))) <= 1e-4
        assert abs(float(np.std(kept, ddof=1)) - float(m.group(2))) <= 1e-4

    text = _flat((ROOT / "README.md").read_text(encoding="utf-8"))
    _has(text, r"\[docs/fidelity.md\]\(docs/fidelity.md\): (\d+) seeds each, `([^`]+)`, (after)-update "
               r"metrics\), final test accuracy is ([\d.]+) ± ([\d.]+) for jaxmlp and ([\d.]+) ± ([\d.]+) "
               r"for the original \((\d+) and (\d+) runs; Welch's t (−?[\d.]+), p = ([\d.]+)\); the (\w+) "
               r"original run blew up at step (\d+) and ended at chance\.",
         seeds, split, "after", acc[0].group(1), acc[0].group(2), acc[1].group(1), acc[1].group(2),
         acc[0].group(3), acc[1].group(3), welch.group(1).replace("-", "−"), cells[3],
         next(w for w, n in _ORDINAL.items() if n == seeds), blew[0][1])
    _has(text, r"on Fashion-MNIST only (\d+) of the file's first 5,000 are among TFDS's first 5,000",
         overlap.group(1))
