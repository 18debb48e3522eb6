"""Accuracy gates: a compression stage that loses too much against the teacher stops the run.

A stage measures its model and the teacher on the same validation data (`measure`), then `check`
compares them with the stage's GateConfig (`distill.gate`, `prune.gate`, `quantize.gate`): task
accuracy may drop by at most `max_accuracy_drop`, perplexity (general and domain) may grow by at most
`max_ppl_ratio`; a null gate or a null limit checks nothing. `check` runs before the stage saves, so a
failing gate raises GateError (exit status 2 through `stage.run`) with the previous output intact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from lmforge.config import GateConfig
from lmforge.errors import LmforgeError
from lmforge.evaluation import metrics
from lmforge.modeling.family import is_classifier

BATCH_SIZE = 16


class GateError(LmforgeError):
    """A compressed model lost more against the teacher than its stage's gate allows."""


@dataclass
class ValidationData:
    general: list[list[int]]
    domain: list[list[int]]
    prompts: list[list[int]]
    labels: list[int]
    label_token_ids: list[int]


def validation_data(limit: int) -> ValidationData:
    """At most `limit` validation blocks of each corpus and `limit` validation task examples."""
    from lmforge import paths
    from lmforge.data import processed as data

    prompts, labels = data.task_prompts("validation", limit)
    return ValidationData(
        general=list(data.lm_examples(paths.LM_GENERAL, "validation", limit)["input_ids"]),
        domain=list(data.lm_examples(paths.LM_DOMAIN, "validation", limit)["input_ids"]),
        prompts=prompts, labels=labels, label_token_ids=data.task_meta()["label_token_ids"])


def measure(model: nn.Module, val: ValidationData) -> dict[str, float]:
    """Validation accuracy and perplexities of `model` (left on the CPU, in eval mode); a diverged model's are inf."""
    def ppl(blocks: list[list[int]]) -> float:
        try:
            return round(metrics.perplexity(model, blocks, BATCH_SIZE), 4)
        except OverflowError:
            return math.inf

    if isinstance(model, nn.Module):  # an ONNX Runtime session has no device to move
        model.cpu()  # the Trainer may have left it on a GPU; these measurements build CPU tensors
    accuracy = metrics.task_accuracy(model, val.prompts, val.labels, val.label_token_ids, BATCH_SIZE)
    if is_classifier(model):  # label logits only: no perplexity to keep
        return {"accuracy": round(accuracy, 4), "ppl_general": None, "ppl_domain": None}
    return {"accuracy": round(accuracy, 4), "ppl_general": ppl(val.general), "ppl_domain": ppl(val.domain)}


def check(stage: str, cfg: GateConfig, measured: dict[str, float], teacher: dict[str, float],
          output: str) -> dict[str, Any]:
    """The gate's result for the stage's metrics; raises GateError naming stage, metric, values and limit."""
    failures = []
    if cfg.max_accuracy_drop is not None:
        drop = teacher["accuracy"] - measured["accuracy"]
        if not drop <= cfg.max_accuracy_drop + 1e-9:
            failures.append(f"validation accuracy {measured['accuracy']:.4f} is {drop:.4f} below the teacher's "
                            f"{teacher['accuracy']:.4f} (allowed drop {stage}.gate.max_accuracy_drop = "
                            f"{cfg.max_accuracy_drop})")
    if cfg.max_ppl_ratio is not None:
        for key in ("ppl_general", "ppl_domain"):
            if teacher[key] is None:  # a classifier (task.head=classifier) has no perplexity
                continue
            ratio = measured[key] / teacher[key]
            if not ratio <= cfg.max_ppl_ratio:  # NaN (a diverged model) fails too
                failures.append(f"validation {key} {measured[key]:.3f} is {ratio:.3f}x the teacher's "
                                f"{teacher[key]:.3f} (allowed {stage}.gate.max_ppl_ratio = {cfg.max_ppl_ratio})")
    if failures:
        raise GateError(f"{stage} gate failed: " + "; ".join(failures) + f"; {output} left as it was")
    return {"enabled": True, "passed": True, "max_accuracy_drop": cfg.max_accuracy_drop,
            "max_ppl_ratio": cfg.max_ppl_ratio, "model": measured, "teacher": teacher}
