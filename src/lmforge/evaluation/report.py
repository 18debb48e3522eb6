"""Turn the results of `evaluate` into DVC metrics, DVC plots data, a markdown summary and a PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from lmforge import paths
from lmforge.artifacts import write_json, write_text

EVALUATE_JSON = paths.METRICS / "evaluate.json"
PARETO_JSON = paths.PLOTS / "pareto.json"
SUMMARY_MD = paths.REPORTS / "summary.md"
PARETO_PNG = paths.REPORTS / "pareto.png"

MB = 1e6
NOISE = 0.10  # latency differences below 10% are within run-to-run noise on a shared CPU
SPREAD_WARNING = 1.5  # p90 / p50 above this: the timings were disturbed


def write_report(results: dict[str, Any]) -> None:
    """Write metrics/evaluate.json, plots/pareto.json, reports/summary.md and reports/pareto.png."""
    write_json(EVALUATE_JSON, results)
    write_json(PARETO_JSON, pareto_records(results))
    write_text(SUMMARY_MD, summary_markdown(results))
    plot_pareto(results, PARETO_PNG)


def pareto_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per model, for `dvc plots` (size and latency against accuracy)."""
    return [{"model": name, "bytes": row["bytes_on_disk"], "mb": round(row["bytes_on_disk"] / MB, 4),
             "accuracy": row["accuracy"], "latency_p50_ms": row["latency_p50_ms"],
             "ppl_domain": row["ppl_domain"]}
            for name, row in results["models"].items()]


def summary_markdown(results: dict[str, Any]) -> str:
    models, baselines, env, data = (results["models"], results["baselines"], results["environment"],
                                    results["data"])
    external = results.get("external", {})
    header = ["model", "params", "non-zero", "MB", "ppl general", "ppl domain", "accuracy",
              "retention", "p50 ms", "speedup", "tokens/s"] + [f"accuracy {name}" for name in external]
    lines = ["# Evaluation summary", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, r in models.items():
        cells = [name, f"{r['parameters']:,}", f"{r['nonzero_parameters']:,}",
                 f"{r['bytes_on_disk'] / MB:.3f}", f"{r['ppl_general']:.2f}", f"{r['ppl_domain']:.2f}",
                 f"{r['accuracy']:.3f}", _fmt(r["accuracy_retention"], "{:.2f}"),
                 f"{r['latency_p50_ms']:.2f}", _fmt(r["speedup_p50"], "{:.2f}x"), f"{r['tokens_per_s']:,.0f}"]
        cells += [f"{r['external_accuracy'][name]:.3f}" for name in external]
        lines.append("| " + " | ".join(cells) + " |")
    for name, b in baselines.items():
        label = {"bag_of_words": "bag-of-words baseline", "majority": "majority class"}.get(name, name)
        lines.append("| " + " | ".join([label] + ["-"] * 5 + [f"{b['accuracy']:.3f}"] + ["-"] * (4 + len(external)))
                     + " |")
    lines += ["",
              "Retention is accuracy relative to the teacher; speedup is the teacher's p50 latency over the "
              "model's. MB are 10^6 bytes of weight files on disk. Perplexity on "
              f"{data['lm_blocks_general']} general and {data['lm_blocks_domain']} domain test blocks, "
              f"accuracy on {data['task_examples']} test examples; latency is one forward pass over "
              f"{data['latency_seq_len']} tokens at batch 1, throughput at batch {data['throughput_batch']}.",
              ""]
    if external:
        lines += ["External test sets (not splits of the training corpora; texts that occur in any training "
                  "corpus, any split, are dropped):", ""]
        lines += [f"- {name}: {st['examples']} examples ({st['rows_read']} read, {st['duplicates_removed']} "
                  f"duplicates, {st['overlap_with_training_dropped']} found in the training corpora and dropped), "
                  f"{st['positive_fraction']:.0%} positive" for name, st in external.items()]
        lines += [""]
    lines += ["## Reading", "", reading(results), "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += ["", "![accuracy against size and latency](pareto.png)", ""]
    return "\n".join(lines)


def reading(results: dict[str, Any]) -> str:
    """A plain-language paragraph generated from the numbers, saying what they do and do not show."""
    models, baselines = results["models"], results["baselines"]
    out: list[str] = []
    best = max(models, key=lambda n: models[n]["accuracy"])
    out.append(f"The most accurate model is {best} ({models[best]['accuracy']:.3f}).")
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
        retention = _fmt(s["accuracy_retention"], "{:.0%}")
        out.append(f"Distillation keeps {retention} of the teacher's accuracy with "
                   f"{s['parameters'] / t['parameters']:.0%} of its parameters, at "
                   f"{s['speedup_p50']:.2f}x its speed (p50).")
    if "student" in models and "pruned" in models:
        out.append(_pruning(models["student"], models["pruned"]))
    if "pruned" in models and "quantized" in models:
        p, q = models["pruned"], models["quantized"]
        out.append(f"Int8 quantization makes the pruned model {p['bytes_on_disk'] / q['bytes_on_disk']:.2f}x "
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
    text = (f"Pruning raises the share of zero parameters from {zeros_before:.0%} to {zeros:.0%}, "
            f"with accuracy {student['accuracy']:.3f} -> {pruned['accuracy']:.3f}")
    if pruned["parameters"] == student["parameters"]:
        # Same shapes: dense kernels do the same arithmetic whatever the zeros, so a measured
        # difference is noise, not sparsity.
        noise = "within noise" if abs(speed - 1) < NOISE else "measurement noise, not sparsity"
        return text + (f"; the weights keep their dense shape, so the size on disk changes {size:.2f}x and "
                       f"p50 latency {speed:.2f}x ({noise}): unstructured sparsity does not speed up "
                       "dense kernels.")
    return text + f"; it changes p50 latency by {speed:.2f}x and size on disk by {size:.2f}x."


def plot_pareto(results: dict[str, Any], path: str | Path) -> None:
    """Two panels, accuracy against MB on disk and against p50 latency, one labelled point per model."""
    models, baselines = results["models"], results["baselines"]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, xlabel in ((axes[0], "bytes_on_disk", "size on disk (MB)"),
                            (axes[1], "latency_p50_ms", "p50 latency, batch 1 (ms)")):
        points = [(name, r[key] / MB if key == "bytes_on_disk" else r[key], r["accuracy"])
                  for name, r in models.items()]
        x_span = max(x for _, x, _ in points) or 1.0
        for i, (name, x, y) in enumerate(points):
            ax.scatter(x, y, s=50, zorder=3)
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
    if baselines:
        axes[1].legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
