"""Stage quantize: models/pruned -> quantize.method -> models/quantized, metrics/quantize.json.

    dvc repro quantize            # or, from the repository root: python stages/quantize.py

The recipe: check the options against the method -> load the pruned model and the validation data -> quantize
by `quantize.method` (dynamic_int8 | onnx_int8 | bf16, one module each in lmforge.compression) into a work
folder (with `quantize.candidates`: each variant into its own, measured, the fastest accurate one kept) -> check
coverage, and measure validation loss and accuracy against the unquantized input -> gate against the teacher ->
(the task-only model) -> save: the folder replaces models/quantized whole -> metrics.
A failing check leaves the previous models/quantized as it was. Load the result with
`lmforge.compression.quantize.load_quantized("models/quantized")`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from lmforge import paths, stage
from lmforge.compression import onnx_int8, quantize
from lmforge.compression.task_head import TaskModel, applies, full_model_predictions
from lmforge.config import Params, QuantizeConfig
from lmforge.data import processed as data
from lmforge.errors import DataError
from lmforge.evaluation import metrics
from lmforge.modeling.family import is_classifier
from lmforge.modeling.io import load_model, weights_bytes

PARAMS = ("quantize",)
BATCH = 16
log = logging.getLogger("lmforge.quantize")


def main(params: Params) -> dict[str, Any]:
    cfg: QuantizeConfig = params.quantize
    source, target = paths.model_dir("pruned"), paths.model_dir("quantized")

    # check: options only one method understands, then the input model
    quantize.check_config(cfg)
    if not (source / "config.json").is_file():
        raise DataError(f"{source}: no model found (its config.json is missing); run `dvc repro prune` first")

    # load inputs: the model, the validation data of the checks (and training blocks for static calibration)
    model = load_model(source)  # any format (a low-rank pruned model too); a truncated or non-finite one stops here
    tokenizer = AutoTokenizer.from_pretrained(source)
    own = data.own_tokenizer(tokenizer)  # a student of another family reads the task in its own tokenizer
    val = {"blocks": list(data.lm_examples(paths.LM_DOMAIN, "validation", cfg.check_max_blocks)["input_ids"]),
           "calibration": list(data.lm_examples(paths.LM_DOMAIN, "train", cfg.calibration_blocks)["input_ids"]),
           "statistics": list(data.lm_examples(paths.LM_DOMAIN, "train", cfg.smooth_blocks)["input_ids"])
           if set(cfg.candidates or ()) & {"smooth", "fp32_fallback"} else [],
           "label_ids": data.task_meta()["label_token_ids"]}
    if own is not None:
        for key in ("blocks", "calibration", "statistics"):
            val[key] = data.retokenize_blocks(val[key], own) if val[key] else []
    val["prompts"], val["labels"] = data.task_prompts("validation", cfg.check_max_examples, own)
    before = check(model, val)

    # quantize into a work folder beside models/quantized, which it replaces only once every check passed
    # (quantize.candidates: each variant in its own folder, measured; the fastest within max_accuracy_drop kept)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.work-", dir=target.parent) as tmp:
        work, chosen, candidates = Path(tmp), None, {}
        if cfg.candidates:
            review = max(val["prompts"], key=len)  # latency: the longest validation review at batch 1

            def measure(candidate) -> dict:
                ms = per_review_ms(lambda i, m: candidate(input_ids=i, attention_mask=m), review)
                return {**check(candidate, val), "ms_per_review": ms}

            chosen, candidates = quantize.choose_candidate(model, work, cfg, calibration_blocks=val["statistics"],
                                                           input_accuracy=before["val_accuracy"], measure=measure)
            work, report, quantized = chosen.folder, chosen.report, chosen.loaded
        else:
            report = quantize.quantize_to(model, work, cfg, calibration_blocks=val["calibration"])
        if report["coverage"] < cfg.min_coverage:
            raise quantize.QuantizationError(
                f"{cfg.method} coverage {report['coverage']:.4f} ({report['int8_params'] or report.get('bf16_params')} "
                f"of {report['linear_params']} weight parameters) is below quantize.min_coverage "
                f"{cfg.min_coverage:.4f}; nothing written to {target}")
        if chosen is None:
            quantized = quantize.load_quantized(work)  # measured as saved: the numbers also prove it loads
        after = check(quantized, val)
        if not all(map(math.isfinite, after.values())):
            raise quantize.QuantizationError(f"{cfg.method}: the quantized model's validation loss or accuracy is not "
                                              f"finite ({after}); nothing written to {target}")

        # gate against the teacher, before the new model replaces the old one
        def measure() -> tuple[dict, dict]:
            teacher = load_model(paths.model_dir("teacher"))
            return (metrics.measure(quantized, data.validation_data(cfg.check_max_examples, own)),
                    metrics.measure(teacher, data.validation_data(cfg.check_max_examples)))

        gate_result = stage.gate("quantize", cfg.gate, target, measure)

        task = {}
        if cfg.task_model and not applies(model):
            log.info("quantize.task_model: a classifier (task.head=classifier) is its own task model: nothing to add")
        elif cfg.task_model:
            task = task_model(chosen.model if chosen else model, quantized, work, chosen.cfg if chosen else cfg, val)
        quantized_bytes = weights_bytes(work)
        task_bytes = (work / onnx_int8.TASK_FILE).stat().st_size if (work / onnx_int8.TASK_FILE).is_file() else None

        # save: the work folder's files, the tokenizer and the card, swapped in whole
        def move_into(folder: Path) -> None:
            for item in work.iterdir():
                os.replace(item, folder / item.name)

        stage.save(target, "quantize", move_into, tokenizer=tokenizer, source=source,
                   metrics={"method": cfg.method, "coverage": report["coverage"], **after,
                            **({"candidate": chosen.name} if chosen else {})})
    log.info("%s: coverage %.4f, validation loss %.4f -> %.4f, accuracy %.4f -> %.4f", cfg.method,
             report["coverage"], before["val_loss"], after["val_loss"], before["val_accuracy"], after["val_accuracy"])

    # metrics
    input_bytes = weights_bytes(source)
    result = {
        "method": cfg.method,
        "per_channel": cfg.per_channel,
        "calibration_blocks": cfg.calibration_blocks,
        **({"int8_weights": report["int8_weights"]} if "int8_weights" in report else {}),  # 8/7 bits and why
        "coverage": report["coverage"],
        "int8_params": report["int8_params"],
        "linear_params": report["linear_params"],
        "weights_bytes": quantized_bytes,
        "input_weights_bytes": input_bytes,
        "bytes_ratio": round(quantized_bytes / input_bytes, 4),
        **({"task_model_bytes": task_bytes} if task_bytes else {}),
        "input_val_loss": before["val_loss"], "val_loss": after["val_loss"],
        "val_loss_delta": round(after["val_loss"] - before["val_loss"], 4),
        "input_val_accuracy": before["val_accuracy"], "val_accuracy": after["val_accuracy"],
        "val_accuracy_delta": round(after["val_accuracy"] - before["val_accuracy"], 4),
        "val_examples": len(val["labels"]), "val_blocks": len(val["blocks"]),
        "gate": gate_result,
        **task,
        **candidates,  # chosen_candidate, choice, candidates: {name: accuracy, loss, ms, bytes, chosen}
    }
    stage.write_metrics(paths.METRICS / "quantize.json", result)
    return result


def check(model, val: dict) -> dict:
    """Validation loss (next-token on domain blocks; a classifier's: cross-entropy of the labels) and accuracy."""
    log_probs = metrics.label_log_probs(model, val["prompts"], val["label_ids"], BATCH)
    accuracy = (log_probs.argmax(-1) == torch.tensor(val["labels"])).float().mean().item()
    if is_classifier(model):
        loss = -log_probs[torch.arange(len(val["labels"])), val["labels"]].mean().item()
    else:
        loss = math.log(metrics.perplexity(model, val["blocks"], BATCH))
    return {"val_loss": round(loss, 4), "val_accuracy": round(accuracy, 4)}


def per_review_ms(fn, prompt: list[int], runs: int = 20) -> float:
    """Median ms of `fn(ids, mask)` on one review at batch 1 (after one warm-up)."""
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        times = metrics.time_ms(lambda: fn(ids, mask), runs)
    return round(sorted(times)[len(times) // 2], 3)


def task_model(model_fp32, quantized, out: Path, cfg: QuantizeConfig, val: dict) -> dict:
    """The task-only model in the quantized model's runtime; its agreement with the full quantized model
    and its latency per review against the full forward."""
    if cfg.method == "onnx_int8":
        onnx_int8.export_task(TaskModel(model_fp32, val["label_ids"]), out, per_channel=cfg.per_channel,
                              max_len=quantize.context_length(model_fp32), block_size=cfg.block_size)
        task = onnx_int8.OnnxTask(out)
    else:
        task = TaskModel(quantized, val["label_ids"]).eval()

    agree = total = 0
    for start in range(0, len(val["prompts"]), BATCH):
        ids, mask = metrics.pad_right(val["prompts"][start: start + BATCH])
        with torch.inference_mode():
            full = full_model_predictions(quantized, ids, mask, val["label_ids"])
            own = torch.as_tensor(task(ids, mask)).argmax(dim=-1)
        agree += int((full == own).sum())
        total += len(ids)
    review = max(val["prompts"], key=len)  # the longest validation review: the task's worst case
    full_ms = per_review_ms(lambda i, m: quantized(input_ids=i, attention_mask=m), review)
    task_ms = per_review_ms(task, review)
    return {"task_agreement_with_full": round(agree / total, 4), "task_ms_per_review": task_ms,
            "full_ms_per_review": full_ms, "task_speedup": round(full_ms / task_ms, 3),
            "review_tokens": len(review)}


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
