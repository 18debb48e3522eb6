"""lmforge.evaluation.statistics: the bootstrap interval of an accuracy and the paired McNemar test, checked
against hand-computed values and simulated data; and how the report prints them. No pipeline run."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from lmforge import report
from lmforge.evaluation import statistics
from lmforge.evaluation.evaluate import CORRECT, add_statistics, rounded

# --- McNemar -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c", "p"), [
    (10, 0, 2 * 0.5**10),  # 0.001953: every discordant item one way
    (0, 10, 2 * 0.5**10),
    (7, 7, 1.0),  # b == c: no evidence either way (2 P(X <= 7) > 1, capped)
    (0, 0, 1.0),  # no discordant item
    (1, 0, 1.0),  # 2 * 0.5
    (5, 1, 2 * (1 + 6) / 2**6),  # 0.21875
    (12, 3, 2 * (1 + 15 + 105 + 455) / 2**15),  # 0.03516
])
def test_mcnemar_matches_hand_computed_values(b, c, p):
    assert statistics.mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_of_many_discordant_items_does_not_overflow():
    assert statistics.mcnemar_p(1200, 1200) == 1.0
    assert 0 <= statistics.mcnemar_p(2000, 1000) < 1e-50


def test_discordant_counts_and_compare():
    model = [1, 1, 0, 0, 1, 1, 1, 0]
    teacher = [1, 0, 1, 0, 0, 1, 0, 0]
    assert statistics.discordant(model, teacher) == (3, 1)  # 3 only the model gets right, 1 only the teacher
    out = statistics.compare(model, teacher, seed=0)
    assert (out["b"], out["c"]) == (3, 1)
    assert out["p_mcnemar"] == pytest.approx(2 * 5 / 16)
    assert out["diff"] == pytest.approx(2 / 8)
    lo, hi = out["diff_ci95"]
    assert lo <= out["diff"] <= hi
    assert out["within_noise"] is True
    with pytest.raises(ValueError, match="same items"):
        statistics.discordant([1, 0], [1, 0, 1])


def test_a_clear_loss_is_not_within_noise():
    teacher = np.ones(500, dtype=bool)
    model = teacher.copy()
    model[:30] = False  # 30 items only the teacher gets right
    out = statistics.compare(model, teacher, seed=1)
    assert (out["b"], out["c"]) == (0, 30) and out["within_noise"] is False
    assert out["p_mcnemar"] == pytest.approx(2 * 0.5**30)
    assert out["diff_ci95"][1] < 0  # the interval of the difference excludes 0 too


# --- bootstrap intervals -----------------------------------------------------------------------------


def test_interval_contains_the_accuracy_and_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.8
    lo, hi = statistics.accuracy_interval(correct, seed=5)
    assert lo <= correct.mean() <= hi and 0 <= lo < hi <= 1
    assert statistics.accuracy_interval(correct, seed=5) == (lo, hi)
    assert statistics.accuracy_interval(correct, seed=6) != (lo, hi)
    # a perfect model: a degenerate interval, still containing its accuracy
    assert statistics.accuracy_interval(np.ones(50, dtype=bool), seed=0) == (1.0, 1.0)


def test_interval_narrows_with_more_items():
    widths = []
    for n in (100, 400, 1600):
        correct = np.arange(n) % 5 != 0  # accuracy 0.8 exactly
        lo, hi = statistics.accuracy_interval(correct, seed=0)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # the width of a 95% interval is about 2 * 1.96 * sqrt(p (1 - p) / n): halves when n quadruples
    assert widths[1] == pytest.approx(2 * 1.96 * math.sqrt(0.16 / 400), rel=0.15)


def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    """Simulated test sets of 200 items from a model whose true accuracy is 0.8: the 95% interval contains
    0.8 in about 95% of them (a 90% or a too-narrow interval fails this)."""
    rng = np.random.default_rng(2024)
    trials, hits = 400, 0
    for trial in range(trials):
        correct = rng.random(200) < 0.8
        lo, hi = statistics.accuracy_interval(correct, seed=trial)
        hits += lo <= 0.8 <= hi
    assert 0.92 <= hits / trials <= 0.98


def test_difference_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    trials, hits = 300, 0
    for trial in range(trials):
        teacher = rng.random(300) < 0.85
        flip = rng.random(300) < 0.1  # the model disagrees with the teacher on ~10% of the items
        model = teacher ^ flip
        # E[model - teacher] = P(flip) * (P(teacher wrong) - P(teacher right)) = 0.1 * (0.15 - 0.85)
        lo, hi = statistics.difference_interval(model, teacher, seed=trial)
        hits += lo <= -0.07 <= hi
    assert 0.91 <= hits / trials <= 0.98


def test_empty_correctness_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        statistics.accuracy_interval([], seed=0)


# --- evaluate's rows ---------------------------------------------------------------------------------


def test_add_statistics_moves_the_items_out_and_compares_with_the_teacher():
    teacher = [True] * 90 + [False] * 10
    results = {"teacher": {"accuracy": 0.9, CORRECT: teacher},
               "student": {"accuracy": 0.89, CORRECT: teacher[:89] + [False] + teacher[90:]},
               "encoder": {"accuracy": None}}
    correct = add_statistics(results, seed=1234)
    assert correct["teacher"]["task"] == teacher
    assert all(CORRECT not in row for row in results.values())
    assert "vs_teacher" not in results["teacher"] and results["encoder"]["accuracy_ci95"] is None
    lo, hi = results["teacher"]["accuracy_ci95"]
    assert lo < 0.9 < hi
    vs = results["student"]["vs_teacher"]
    assert (vs["b"], vs["c"], vs["p_mcnemar"], vs["within_noise"]) == (0, 1, 1.0, True)
    row = rounded(results["student"])
    assert all(len(str(v)) <= 6 for v in row["accuracy_ci95"])  # four decimals inside the list too
    assert rounded({"p_mcnemar": 1.23456e-7}) == {"p_mcnemar": 1.235e-7}  # a small p keeps its digits


# --- the report --------------------------------------------------------------------------------------


def model_row(accuracy: float, mb: float, ms: float, ci: list[float], vs: dict | None = None) -> dict:
    row = {"accuracy": accuracy, "accuracy_ci95": ci, "bytes_on_disk": int(mb * 1e6), "latency_p50_ms": ms,
           "latency_p90_ms": ms * 1.1, "ppl_general": 5.0, "ppl_domain": 5.0, "ppl_kind": "next-token",
           "parameters": 1000, "nonzero_parameters": 1000, "tokens_per_s": 1e4, "speedup_p50": 3.6 / ms,
           "accuracy_retention": accuracy / 0.942}
    if vs is not None:
        row["vs_teacher"] = vs
    return row


def synthetic_results() -> dict:
    models = {
        "teacher": model_row(0.942, 3.8, 3.6, [0.922, 0.961]),
        "student": model_row(0.963, 2.2, 2.1, [0.947, 0.977],
                             {"b": 20, "c": 8, "p_mcnemar": 0.0357, "diff": 0.0213, "diff_ci95": [0.002, 0.039],
                              "within_noise": False}),
        "pruned": model_row(0.947, 1.4, 1.3, [0.927, 0.965],
                            {"b": 12, "c": 9, "p_mcnemar": 0.6636, "diff": 0.0053, "diff_ci95": [-0.012, 0.023],
                             "within_noise": True}),
        "quantized": model_row(0.911, 0.4, 0.6, [0.887, 0.934],
                               {"b": 3, "c": 21, "p_mcnemar": 0.0003, "diff": -0.0319,
                                "diff_ci95": [-0.05, -0.016], "within_noise": False}),
    }
    results = {"models": models, "baselines": {}, "environment": {"threads": 2},
               "data": {"lm_blocks_general": 64, "lm_blocks_domain": 64, "task_examples": 564,
                        "validation_examples": 558, "latency_seq_len": 64, "throughput_batch": 16},
               "gate": {"max_accuracy_drop": 0.02, "max_ppl_ratio": 1.1}}
    results["pareto"] = {"size": report.pareto_front(models, "bytes_on_disk"),
                         "latency": report.pareto_front(models, "latency_p50_ms")}
    results["recommendation"] = report.recommend(models, results["gate"])
    return results


def test_summary_prints_intervals_and_the_paired_test():
    results = synthetic_results()
    summary = report.summary_markdown(results)
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    assert "| vs teacher |" in table[0]
    row = {re.match(r"\|\s*\**(\w+)", line).group(1): line for line in table[2:]}
    assert "0.942 [0.922, 0.961]" in row["teacher"]
    assert "0.963 [0.947, 0.977]" in row["student"]
    assert "+2.1 points, McNemar p=0.036" in row["student"]
    assert "within noise (p=0.66)" in row["pruned"]
    assert "-3.2 points, McNemar p<0.001" in row["quantized"]
    assert "95% bootstrap interval" in summary and "McNemar" in summary


def test_recommendation_and_reading_do_not_call_a_within_noise_model_better_or_worse():
    results = synthetic_results()
    results["recommendation"]["model"] = "pruned"  # within noise of the teacher
    text = report.recommendation_text(results)
    assert "within noise" in text and "p=0.66" in text
    assert "better" not in text and "worse" not in text and "above" not in text and "below the" not in text
    results["recommendation"]["model"] = "student"  # 2.1 points above, p = 0.036
    text = report.recommendation_text(results)
    assert "2.1 points above the teacher's" in text and "p=0.036" in text
    reading = report.reading(results)
    assert "student" in reading and "within noise" in reading


def test_reading_does_not_call_the_teacher_most_accurate_when_others_are_within_noise():
    results = synthetic_results()
    models = results["models"]
    models["teacher"]["accuracy"] = 0.97
    models["student"]["vs_teacher"] = {**models["student"]["vs_teacher"], "diff": -0.007, "p_mcnemar": 0.6,
                                       "within_noise": True}
    reading = report.reading(results)
    assert "most accurate model" not in reading
    assert "The highest measured accuracy is the teacher's (0.970)" in reading
    assert "within noise: student, pruned" in reading
