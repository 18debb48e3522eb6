"""Accuracy gates: a compression stage that loses too much against the teacher stops the run.

A stage measures its model and the teacher on the same validation data (`metrics.measure`), then `check`
compares them with the stage's GateConfig (`distill.gate`, `prune.gate`, `quantize.gate`): task
accuracy may drop by at most `max_accuracy_drop`, perplexity (general and domain) may grow by at most
`max_ppl_ratio`; a null gate or a null limit checks nothing. `check` runs before the stage saves, so a
failing gate raises GateError (exit status 2 through `stage.run`) with the previous output intact.
`shortfalls` is the one rule of "as good as the teacher", also used by the report's recommendation.

Plain Python on numbers (no torch): the stage frame (lmforge.stage) imports it, and the validate stage
imports the frame.
"""

from __future__ import annotations

from typing import Any

from lmforge.config import GateConfig
from lmforge.errors import LmforgeError

TOLERANCE = 1e-9  # a value exactly at the limit passes, whatever the float rounding of the subtraction


class GateError(LmforgeError):
    """A compressed model lost more against the teacher than its stage's gate allows."""


def shortfalls(measured: dict[str, Any], reference: dict[str, Any], max_accuracy_drop: float | None,
               max_ppl_ratio: float | None) -> list[str]:
    """The metrics ("accuracy", "ppl_general", "ppl_domain") on which `measured` is worse than `reference`
    by more than the limits allow (a null limit checks nothing; a null perplexity, a classifier's, neither).
    NaN (a diverged model) fails."""
    failing = []
    if max_accuracy_drop is not None and not reference["accuracy"] - measured["accuracy"] <= \
            max_accuracy_drop + TOLERANCE:
        failing.append("accuracy")
    if max_ppl_ratio is not None:
        for key in ("ppl_general", "ppl_domain"):
            if reference[key] is None or measured[key] is None:
                continue
            if not measured[key] <= max_ppl_ratio * reference[key] + TOLERANCE:
                failing.append(key)
    return failing


def check(stage: str, cfg: GateConfig, measured: dict[str, float], teacher: dict[str, float],
          output: str) -> dict[str, Any]:
    """The gate's result for the stage's metrics; raises GateError naming stage, metric, values and limit."""
    failures = []
    for key in shortfalls(measured, teacher, cfg.max_accuracy_drop, cfg.max_ppl_ratio):
        if key == "accuracy":
            drop = teacher["accuracy"] - measured["accuracy"]
            failures.append(f"validation accuracy {measured['accuracy']:.4f} is {drop:.4f} below the teacher's "
                            f"{teacher['accuracy']:.4f} (allowed drop {stage}.gate.max_accuracy_drop = "
                            f"{cfg.max_accuracy_drop})")
        else:
            ratio = measured[key] / teacher[key]
            failures.append(f"validation {key} {measured[key]:.3f} is {ratio:.3f}x the teacher's "
                            f"{teacher[key]:.3f} (allowed {stage}.gate.max_ppl_ratio = {cfg.max_ppl_ratio})")
    if failures:
        raise GateError(f"{stage} gate failed: " + "; ".join(failures) + f"; {output} left as it was")
    return {"enabled": True, "passed": True, "max_accuracy_drop": cfg.max_accuracy_drop,
            "max_ppl_ratio": cfg.max_ppl_ratio, "model": measured, "teacher": teacher}
