"""Turn the results of `evaluate` into DVC metrics, DVC plots data, a markdown summary and a PNG.

metrics/headline.json is the one DVC metrics file: per model the numbers a reader compares across
experiments (accuracy, perplexities, MB, p50 latency, speed-up) and the recommended model, so that
`dvc exp show` and `dvc metrics diff` stay readable. Everything else evaluate measured is in
metrics/evaluate.json, a plain output.

The report marks the Pareto frontier (no other model is at least as accurate and at most as costly)
of accuracy against size and against latency, and names a recommended model: the fastest one inside
the accuracy gate (`evaluate.gate`, relative to the teacher). Every accuracy is printed with its bootstrap 95%
interval, and every model's accuracy against the teacher's with the paired McNemar test on the same items
(lmforge.evaluation.statistics); a difference with p >= 0.05 is called within noise, never better or worse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lmforge import paths
from lmforge.artifacts import atomic_file, write_json, write_text
from lmforge.evaluation import statistics
from lmforge.evaluation.gate import shortfalls
from lmforge.stage import write_metrics

EVALUATE_JSON = paths.METRICS / "evaluate.json"
HEADLINE_JSON = paths.METRICS / "headline.json"
PARETO_JSON = paths.PLOTS / "pareto.json"
SUMMARY_MD = paths.REPORTS / "summary.md"
PARETO_PNG = paths.REPORTS / "pareto.png"

MB = 1e6
NOISE = 0.10  # latency differences below 10% are within run-to-run noise on a shared CPU
SPREAD_WARNING = 1.5  # p90 / p50 above this: the timings were disturbed
REFERENCE = "teacher"  # the gate is relative to it


def with_task(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The models that answer the task (an encoder's masked LM has no task head: accuracy None)."""
    return {name: row for name, row in models.items() if row["accuracy"] is not None}


def pareto_front(models: dict[str, dict[str, Any]], cost: str) -> list[str]:
    """Models that no other model dominates: none is at least as accurate and at most as costly, and
    better in one of the two."""
    models = with_task(models)
    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["accuracy"] >= b["accuracy"] and a[cost] <= b[cost]
                and (a["accuracy"] > b["accuracy"] or a[cost] < b[cost]))

    return [name for name, row in models.items()
            if not any(dominates(other, row) for o, other in models.items() if o != name)]


def gate_failures(row: dict[str, Any], ref: dict[str, Any], gate: dict[str, Any]) -> list[str]:
    """Why `row` is not as good as the reference under `gate` (empty: it passes), by the stages' own rule."""
    failures = []
    for key in shortfalls(row, ref, gate.get("max_accuracy_drop"), gate.get("max_ppl_ratio")):
        if key == "accuracy":
            failures.append(f"accuracy {row['accuracy']:.3f} < {ref['accuracy'] - gate['max_accuracy_drop']:.3f}")
        else:
            failures.append(f"{key} {row[key]:.2f} > {gate['max_ppl_ratio']:g}x the {REFERENCE}'s")
    return failures


def recommend(models: dict[str, dict[str, Any]], gate: dict[str, Any]) -> dict[str, Any]:
    """The fastest model (p50 latency) inside the gate. Latencies within NOISE of the fastest are run-to-run
    noise on these machines, so among those the smallest on disk is named (then the most accurate)."""
    out: dict[str, Any] = {"model": None, "gate": gate, "rule": (
        f"fastest p50 latency among the models within the gate (relative to the {REFERENCE}); latencies within "
        f"{NOISE:.0%} of the fastest count as equal, and the smallest on disk of those is named")}
    models = with_task(models)
    ref = models.get(REFERENCE)
    if ref is None:
        out["reason"] = f"no {REFERENCE} among the evaluated models: nothing to gate against"
        return out
    failures = {name: gate_failures(row, ref, gate) for name, row in models.items()}
    out["failed"] = {name: reasons for name, reasons in failures.items() if reasons}
    passed = [name for name, reasons in failures.items() if not reasons]
    fastest = min(models[n]["latency_p50_ms"] for n in passed)
    tied = [n for n in passed if models[n]["latency_p50_ms"] <= fastest * (1 + NOISE)]
    out["model"] = min(tied, key=lambda n: (models[n]["bytes_on_disk"], -models[n]["accuracy"]))
    out["equally_fast"] = tied
    return out


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics: per model the numbers compared across experiments, and the recommended model."""
    out: dict[str, Any] = {}
    for name, r in results["models"].items():
        out[name] = {"accuracy": r["accuracy"], "validation_accuracy": r.get("validation_accuracy"),
                     "ppl_general": r["ppl_general"], "ppl_domain": r["ppl_domain"],
                     "mb": round(r["bytes_on_disk"] / MB, 4), "p50_ms": r["latency_p50_ms"],
                     "speedup": r["speedup_p50"]}
    for name, b in results["baselines"].items():
        out[f"baseline_{name}"] = {"accuracy": b["accuracy"]}
    out["recommended"] = results["recommendation"]["model"]
    return out


def write_report(results: dict[str, Any]) -> None:
    """Add the Pareto frontiers and the recommendation to `results`, then write metrics/evaluate.json,
    metrics/headline.json, plots/pareto.json, reports/summary.md and reports/pareto.png."""
    models = results["models"]
    results["pareto"] = {"size": pareto_front(models, "bytes_on_disk"),
                         "latency": pareto_front(models, "latency_p50_ms")}
    results["recommendation"] = recommend(models, results["gate"])
    write_metrics(EVALUATE_JSON, results)
    write_metrics(HEADLINE_JSON, headline(results))
    write_json(PARETO_JSON, pareto_records(results))  # a diverged model's NaN: null
    write_text(SUMMARY_MD, summary_markdown(results))
    plot_pareto(results, PARETO_PNG)


def pareto_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per model, for `dvc plots` (size and latency against accuracy)."""
    return [{"model": name, "bytes": row["bytes_on_disk"], "mb": round(row["bytes_on_disk"] / MB, 4),
             "accuracy": row["accuracy"], "latency_p50_ms": row["latency_p50_ms"],
             "ppl_domain": row["ppl_domain"]}
            for name, row in with_task(results["models"]).items()]


def summary_markdown(results: dict[str, Any]) -> str:
    models, baselines, env, data = (results["models"], results["baselines"], results["environment"],
                                    results["data"])
    external = results.get("external", {})
    header = ["model", "params", "non-zero", "MB", "ppl general", "ppl domain", "accuracy [95% interval]",
              "validation", "vs teacher", "retention", "p50 ms", "speedup", "tokens/s", "Pareto"]
    header += [f"accuracy {name}" for name in external]
    fronts, rec = results["pareto"], results["recommendation"]
    lines = ["# Evaluation summary", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, r in models.items():
        ppl = "{:.2f} (masked)" if r.get("ppl_kind") == "masked-token" else "{:.2f}"
        cells = [name, f"{r['parameters']:,}", f"{r['nonzero_parameters']:,}",
                 f"{r['bytes_on_disk'] / MB:.3f}", format_value(r["ppl_general"], ppl),
                 format_value(r["ppl_domain"], ppl),
                 format_accuracy(r["accuracy"], r.get("accuracy_ci95")),
                 format_value(r.get("validation_accuracy"), "{:.3f}"), vs_teacher_cell(name, r),
                 format_value(r["accuracy_retention"], "{:.2f}"),
                 format_value(r["latency_p50_ms"], "{:.2f}"), format_value(r["speedup_p50"], "{:.2f}x"),
                 format_value(r["tokens_per_s"], "{:,.0f}"),
                 " + ".join(axis for axis in ("size", "latency") if name in fronts[axis]) or "-"]
        cells += [format_accuracy(r.get("external_accuracy", {}).get(name),
                                  r.get("external_accuracy_ci95", {}).get(name)) for name in external]
        label = f"**{name}** (recommended)" if name == rec["model"] else name
        lines.append("| " + " | ".join([label] + cells[1:]) + " |")
    for name, b in baselines.items():
        label = {"bag_of_words": "bag-of-words baseline", "majority": "majority class"}.get(name, name)
        lines.append("| " + " | ".join([label] + ["-"] * 5 + [f"{b['accuracy']:.3f}"] + ["-"] * (7 + len(external)))
                     + " |")
    lines += ["",
              "Retention is accuracy relative to the teacher; speedup is the teacher's p50 latency over the "
              "model's. MB are 10^6 bytes of weight files on disk. Perplexity on "
              f"{data['lm_blocks_general']} general and {data['lm_blocks_domain']} domain test blocks, "
              f"accuracy on {data['task_examples']} test examples, with its 95% bootstrap interval "
              f"({statistics.RESAMPLES} resamples of the test items: how far the accuracy could move on another "
              "test sample of this size). Validation: the accuracy on "
              f"{data['validation_examples']} validation examples, the split to choose settings on (the "
              "test accuracy is the one to report, not to tune). vs teacher: the accuracy difference from the "
              "teacher in points, and the exact McNemar p of the paired test on the same items (the chance of a "
              "difference at least this large if the two were equally accurate); within noise when p >= "
              f"{statistics.ALPHA:g}. "
              "Latency is one forward pass over "
              f"{data['latency_seq_len']} tokens at batch 1, throughput at batch {data['throughput_batch']}. "
              "Pareto: on the frontier of accuracy against size on disk and/or p50 latency (no other model is at "
              "least as accurate and at most as large, or as slow)."
              + (" Perplexity marked (masked) is an encoder's masked-token perplexity: the same 15% of each "
                 "block's tokens replaced by [MASK] for every model; not comparable with next-token perplexity; "
                 "a classifier (task.head=classifier) has none." if any(r.get("ppl_kind") == "masked-token"
                                                                      for r in models.values()) else "")
              + "".join(f" {n}: next-sentence accuracy {r['nsp_accuracy']:.3f} on test sentence pairs."
                        for n, r in models.items() if "nsp_accuracy" in r),
              ""]
    if external:
        lines += ["External test sets (not splits of the training corpora; texts that occur in any training "
                  "corpus, any split, are dropped):", ""]
        lines += [f"- {name}: {st['examples']} examples ({st['rows_read']} read, {st['duplicates_removed']} "
                  f"duplicates, {st['overlap_with_training_dropped']} found in the training corpora and dropped), "
                  f"{st['positive_fraction']:.0%} positive" for name, st in external.items()]
        lines += [""]
    lines += ["## Recommended model", "", recommendation_text(results), "",
              "## Reading", "", reading(results), "", "## Environment", ""]
    lines += [f"- {key}: {_env_value(value)}" for key, value in env.items()]
    lines += ["", "![accuracy against size and latency](pareto.png)", ""]
    return "\n".join(lines)


def _env_value(value: Any) -> str:
    """A nested entry (the precision decision and its probe) as `key=value` pairs on one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_env_value(v)}" for k, v in value.items() if v is not None)
    return str(value)


def recommendation_text(results: dict[str, Any]) -> str:
    rec, models = results["recommendation"], results["models"]
    gate = rec["gate"]
    limits = ", ".join(
        ([f"accuracy at least the {REFERENCE}'s minus {gate['max_accuracy_drop']:g}"]
         if gate.get("max_accuracy_drop") is not None else [])
        + ([f"perplexities at most {gate['max_ppl_ratio']:g}x the {REFERENCE}'s"]
           if gate.get("max_ppl_ratio") is not None else [])) or "no limits"
    if rec["model"] is None:
        return f"None: {rec['reason']}."
    name, r = rec["model"], models[rec["model"]]
    text = (f"**{name}**: the fastest model inside the gate ({limits}; `evaluate.gate`): accuracy {r['accuracy']:.3f}, "
            f"{r['bytes_on_disk'] / MB:.2f} MB, p50 {r['latency_p50_ms']:.2f} ms "
            f"({format_value(r['speedup_p50'], '{:.2f}x')} the {REFERENCE}'s speed).")
    said = vs_teacher_sentence(name, r)
    text += f" {said}" if said else ""
    others = [n for n in rec["equally_fast"] if n != name]
    if others:
        text += (f" {', '.join(others)} {'is' if len(others) == 1 else 'are'} within {NOISE:.0%} of its latency "
                 "(noise on this machine); it is the smallest on disk of them.")
    if rec["failed"]:
        text += " Outside the gate: " + "; ".join(f"{n} ({', '.join(why)}{_noise_note(models[n], why)})"
                                                  for n, why in rec["failed"].items()) + "."
    return text + f' Use it: `lmforge predict models/{name} "a review"`.'


def _noise_note(row: dict[str, Any], why: list[str]) -> str:
    """A model outside the accuracy gate whose difference from the teacher is within noise: say so."""
    vs = row.get("vs_teacher")
    if vs is None or not vs["within_noise"] or not any(w.startswith("accuracy") for w in why):
        return ""
    return f"; its accuracy is still within noise of the {REFERENCE}'s, {format_p(vs['p_mcnemar'])}"


def reading(results: dict[str, Any]) -> str:
    """A plain-language paragraph generated from the numbers, saying what they do and do not show."""
    models, baselines = with_task(results["models"]), results["baselines"]
    out: list[str] = []
    best = max(models, key=lambda n: models[n]["accuracy"])
    vs = models[best].get("vs_teacher")
    compared = {n: r["vs_teacher"] for n, r in models.items() if r.get("vs_teacher") is not None}
    if vs is not None and vs["within_noise"]:
        out.append(f"The highest measured accuracy is {best}'s ({models[best]['accuracy']:.3f}), within noise of "
                   f"the {REFERENCE}'s ({format_p(vs['p_mcnemar'])}).")
    elif best == REFERENCE and any(v["within_noise"] for v in compared.values()):  # not "the most accurate"
        out.append(f"The highest measured accuracy is the {REFERENCE}'s ({models[best]['accuracy']:.3f}).")
    else:
        out.append(f"The most accurate model is {best} ({models[best]['accuracy']:.3f}).")
    if compared:
        same = [n for n, v in compared.items() if v["within_noise"]]
        differ = [f"{n} ({v['diff'] * 100:+.1f} points, {format_p(v['p_mcnemar'])})"
                  for n, v in compared.items() if not v["within_noise"]]
        out.append("Against the teacher on the same test items (McNemar): "
                   + "; ".join(([f"within noise: {', '.join(same)}"] if same else [])
                               + ([f"measurably different: {', '.join(differ)}"] if differ else [])) + ".")
    per_mb = max(models, key=lambda n: models[n]["accuracy"] / max(models[n]["bytes_on_disk"] / MB, 1e-9))
    out.append(f"The best accuracy per MB on disk is {per_mb} "
               f"({models[per_mb]['accuracy']:.3f} at {models[per_mb]['bytes_on_disk'] / MB:.2f} MB).")
    if "bag_of_words" in baselines:
        bow = baselines["bag_of_words"]["accuracy"]
        below = [n for n, r in models.items() if r["accuracy"] <= bow]
        if below:
            verb = "does" if len(below) == 1 else "do"
            out.append(f"{', '.join(below)} {verb} not beat the bag-of-words baseline ({bow:.3f}).")
        else:
            out.append(f"Every model beats the bag-of-words baseline ({bow:.3f}).")
    if "majority" in baselines:
        majority = baselines["majority"]["accuracy"]
        stuck = [n for n, r in models.items() if r["accuracy"] <= majority]
        if stuck:
            verb = "is" if len(stuck) == 1 else "are"
            out.append(f"{', '.join(stuck)} {verb} no better than always predicting the majority class "
                       f"({majority:.3f}).")
    if "teacher" in models and "student" in models:
        s, t = models["student"], models["teacher"]
        retention = format_value(s["accuracy_retention"], "{:.0%}")
        noise = (f" (within noise, {format_p(s['vs_teacher']['p_mcnemar'])})"
                 if (s.get("vs_teacher") or {}).get("within_noise") else "")
        out.append(f"Distillation keeps {retention} of the teacher's accuracy{noise} with "
                   f"{s['parameters'] / t['parameters']:.0%} of its parameters, at "
                   f"{s['speedup_p50']:.2f}x its speed (p50).")
    if "student" in models and "pruned" in models:
        out.append(_pruning(models["student"], models["pruned"]))
    if "pruned" in models and "quantized" in models:
        p, q = models["pruned"], models["quantized"]
        out.append(f"Quantization ({q.get('precision', 'int8')}) makes the pruned model "
                   f"{p['bytes_on_disk'] / q['bytes_on_disk']:.2f}x "
                   f"smaller on disk and {p['latency_p50_ms'] / q['latency_p50_ms']:.2f}x as fast at p50, "
                   f"with accuracy {p['accuracy']:.3f} -> {q['accuracy']:.3f}.")
    out.append(f"Latencies are single-machine measurements; differences under {NOISE:.0%} are within noise, "
               f"and tiny models are dominated by per-call overhead rather than arithmetic.")
    spread, widest = max((r["latency_p90_ms"] / r["latency_p50_ms"], n) for n, r in models.items())
    # The spread of repeated runs, not the load average: under `dvc repro` the 1-minute load average
    # still counts the training stage that ran just before.
    if spread > SPREAD_WARNING:
        out.append(f"Here the timings are suspect: p90/p50 reaches {spread:.2f} ({widest}), so the CPU was "
                   "probably shared with other work; rerun on an idle machine before trusting any speed ratio.")
    return " ".join(out)


def _pruning(student: dict[str, Any], pruned: dict[str, Any]) -> str:
    zeros = 1 - pruned["nonzero_parameters"] / pruned["parameters"]
    zeros_before = 1 - student["nonzero_parameters"] / student["parameters"]
    speed = student["latency_p50_ms"] / pruned["latency_p50_ms"]
    size = student["bytes_on_disk"] / pruned["bytes_on_disk"]
    if pruned["parameters"] < student["parameters"]:  # structured or low-rank: the matrices themselves shrank
        removed = 1 - pruned["parameters"] / student["parameters"]
        text = (f"Pruning removes {removed:.0%} of the student's parameters (smaller matrices, not zeros), "
                f"with accuracy {student['accuracy']:.3f} -> {pruned['accuracy']:.3f}")
    else:
        text = (f"Pruning raises the share of zero parameters from {zeros_before:.0%} to {zeros:.0%}, "
                f"with accuracy {student['accuracy']:.3f} -> {pruned['accuracy']:.3f}")
    if pruned["parameters"] == student["parameters"]:
        # Same shapes: dense kernels do the same arithmetic whatever the zeros, so a measured
        # difference is noise, not sparsity.
        noise = "within noise" if abs(speed - 1) < NOISE else "measurement noise, not sparsity"
        return text + (f"; the weights keep their dense shape, so the size on disk changes {size:.2f}x and "
                       f"p50 latency {speed:.2f}x ({noise}): unstructured sparsity does not speed up "
                       "dense kernels.")
    return text + f"; it makes p50 latency {speed:.2f}x as fast and the file {size:.2f}x smaller."


def plot_pareto(results: dict[str, Any], path: str | Path) -> None:
    """Two panels, accuracy against MB on disk and against p50 latency, one labelled point per model; the
    Pareto frontier as a line (its points outlined) and the recommended model as a star."""
    models, baselines = with_task(results["models"]), results["baselines"]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, axis, xlabel in ((axes[0], "bytes_on_disk", "size", "size on disk (MB)"),
                                  (axes[1], "latency_p50_ms", "latency", "p50 latency, batch 1 (ms)")):
        points = [(name, r[key] / MB if key == "bytes_on_disk" else r[key], r["accuracy"])
                  for name, r in models.items()]
        x_span = max(x for _, x, _ in points) or 1.0
        front = sorted((x, y) for name, x, y in points if name in results["pareto"][axis])
        if len(front) > 1:  # the frontier as a staircase: from each frontier point to the next, costlier one
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="tab:green", alpha=0.6,
                    linewidth=1.5, zorder=2, label="Pareto frontier (outlined points)")
        for i, (name, x, y) in enumerate(points):
            recommended = name == results["recommendation"]["model"]
            # the recommended model is a star (in the legend), frontier points are outlined; labels stay
            # the bare names so the label stacking below still fits
            ax.scatter(x, y, s=160 if recommended else 50, marker="*" if recommended else "o", zorder=3,
                       edgecolors="black" if name in results["pareto"][axis] else "none",
                       label="recommended" if recommended else None)
            # Stack the labels of points whose labels would overprint (pruning keeps the size; int8 and
            # fp32 latencies of a small model are close): a label is ~15% of the axis wide.
            stacked = sum(abs(x - x2) <= 0.15 * x_span and abs(y - y2) <= 0.03 for _, x2, y2 in points[:i])
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 5 + 11 * stacked))
        for (name, b), color in zip(baselines.items(), ("tab:gray", "tab:red"), strict=False):
            label = {"bag_of_words": "bag-of-words baseline", "majority": "majority class"}.get(name, name)
            ax.axhline(b["accuracy"], linestyle="--", color=color, linewidth=1, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.12)  # room for stacked labels above points near 1.0
        ax.grid(alpha=0.3)
        ax.margins(x=0.2)
        ax.set_xlim(left=0)
    axes[0].set_ylabel("task accuracy")
    axes[0].set_title("accuracy vs size")
    axes[1].set_title("accuracy vs latency")
    legend: dict[str, Any] = {}  # one legend for both panels: the frontier line may be drawn in one only
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    axes[1].legend(list(legend.values()), list(legend), loc="lower right")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def format_accuracy(accuracy: float | None, interval: list[float] | None) -> str:
    """`0.829 [0.802, 0.856]`: an accuracy and its 95% interval (the accuracy alone without one)."""
    if accuracy is None:
        return "-"
    return f"{accuracy:.3f}" + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def vs_teacher_cell(name: str, row: dict[str, Any]) -> str:
    """The table's `vs teacher` cell: the difference in points and its McNemar p, or within noise."""
    if name == REFERENCE:
        return "(reference)"
    vs = row.get("vs_teacher")
    if vs is None:
        return "-"
    points = f"{vs['diff'] * 100:+.1f} points"
    if vs["within_noise"]:
        return f"{points}, within noise ({format_p(vs['p_mcnemar'])})"
    return f"{points}, McNemar {format_p(vs['p_mcnemar'])}"


def vs_teacher_sentence(name: str, row: dict[str, Any]) -> str:
    """What the paired test says of `name` against the teacher, as a sentence ("" when it has none)."""
    vs = row.get("vs_teacher")
    if name == REFERENCE or vs is None:
        return ""
    if vs["within_noise"]:
        return (f"Its accuracy is within noise of the {REFERENCE}'s ({vs['diff'] * 100:+.1f} points, McNemar "
                f"{format_p(vs['p_mcnemar'])} on the same {vs['b'] + vs['c']} items where they disagree): "
                "this test set cannot tell the two apart.")
    lo, hi = vs["diff_ci95"]
    return (f"Its accuracy is {abs(vs['diff']) * 100:.1f} points {'above' if vs['diff'] > 0 else 'below'} the "
            f"{REFERENCE}'s (McNemar {format_p(vs['p_mcnemar'])}; 95% interval of the difference "
            f"[{lo * 100:+.1f}, {hi * 100:+.1f}] points).")


def format_value(value: float | None, pattern: str) -> str:
    """`pattern` filled with `value`, or "-" for a value a model does not have (a classifier's perplexity)."""
    return "-" if value is None else pattern.format(value)
