"""Stage quantize: models/pruned -> quantize.method -> models/quantized, metrics/quantize.json.

    dvc repro quantize

The recipe: load the pruned model -> quantize by `quantize.method` (dynamic_int8 | onnx_int8 | bf16, one
module each in lmforge.compression) -> check coverage -> measure validation loss and accuracy against the
unquantized input -> (task-only model) -> swap the folder into place -> metrics. Everything is written to a
temporary folder first: a failing check leaves the previous models/quantized as it was. Load the result with
`lmforge.compression.quantize.load_quantized("models/quantized")`.
"""

import logging
import math
import time

import datasets
import torch
from transformers import AutoTokenizer

from lmforge import paths, stage
from lmforge.artifacts import atomic_dir, read_json
from lmforge.compression import quantize
from lmforge.compression.task_head import TaskModel, applies, full_model_predictions
from lmforge.config import QuantizeConfig, stage_params
from lmforge.errors import DataError
from lmforge.evaluation import gate, metrics
from lmforge.modeling.card import write_bundle
from lmforge.modeling.checks import load_model
from lmforge.modeling.family import is_classifier

log = logging.getLogger("lmforge.quantize")
BATCH = 16


def load_validation(cfg: QuantizeConfig) -> dict:
    """The validation data of the checks (and training blocks for static calibration), read before any work."""
    try:
        domain = datasets.load_from_disk(str(paths.LM_DOMAIN))
        task = datasets.load_from_disk(str(paths.TASK))["validation"]
        label_ids = read_json(paths.TASK_META)["label_token_ids"]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise DataError(f"quantize checks its model on data/processed, which cannot be read ({exc}); "
                        "run `dvc repro preprocess`") from exc
    task = task.select(range(min(cfg.check_max_examples, len(task))))
    return {"blocks": list(domain["validation"]["input_ids"])[: cfg.check_max_blocks],
            "calibration": list(domain["train"]["input_ids"])[: cfg.calibration_blocks],
            "prompts": list(task["prompt_ids"]), "labels": list(task["label"]), "label_ids": label_ids}


def check(model, data: dict) -> dict:
    """Validation loss (next-token on domain blocks; a classifier's: cross-entropy of the labels) and accuracy."""
    log_probs = metrics.label_log_probs(model, data["prompts"], data["label_ids"], BATCH)
    accuracy = (log_probs.argmax(-1) == torch.tensor(data["labels"])).float().mean().item()
    if is_classifier(model):
        loss = -log_probs[torch.arange(len(data["labels"])), data["labels"]].mean().item()
    else:
        loss = math.log(metrics.perplexity(model, data["blocks"], BATCH))
    return {"val_loss": round(loss, 4), "val_accuracy": round(accuracy, 4)}


def per_review_ms(fn, prompt: list[int], runs: int = 20) -> float:
    """Median ms of `fn(ids, mask)` on one review at batch 1 (after one warm-up)."""
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        fn(ids, mask)
        for _ in range(runs):
            start = time.perf_counter()
            fn(ids, mask)
            times.append((time.perf_counter() - start) * 1000)
    return round(sorted(times)[len(times) // 2], 3)


def task_model(model_fp32, quantized, out, cfg: QuantizeConfig, data: dict) -> dict:
    """The task-only model in the quantized model's runtime; its agreement with the full quantized model
    and its latency per review against the full forward."""
    if cfg.method == "onnx_int8":
        from lmforge.compression import onnx_int8

        onnx_int8.export_task(TaskModel(model_fp32, data["label_ids"]), out, per_channel=cfg.per_channel,
                              max_len=quantize.context_length(model_fp32), block_size=cfg.block_size)
        task = onnx_int8.OnnxTask(out)
    else:
        task = TaskModel(quantized, data["label_ids"]).eval()

    agree = total = 0
    for start in range(0, len(data["prompts"]), BATCH):
        ids, mask = metrics._pad_right(data["prompts"][start: start + BATCH])
        with torch.inference_mode():
            full = full_model_predictions(quantized, ids, mask, data["label_ids"])
            own = torch.as_tensor(task(ids, mask)).argmax(dim=-1)
        agree += int((full == own).sum())
        total += len(ids)
    review = max(data["prompts"], key=len)  # the longest validation review: the task's worst case
    full_ms = per_review_ms(lambda i, m: quantized(input_ids=i, attention_mask=m), review)
    task_ms = per_review_ms(task, review)
    return {"task_agreement_with_full": round(agree / total, 4), "task_ms_per_review": task_ms,
            "full_ms_per_review": full_ms, "task_speedup": round(full_ms / task_ms, 3),
            "review_tokens": len(review)}


def main() -> None:
    params = stage_params("quantize")
    cfg: QuantizeConfig = params.quantize
    quantize.check_config(cfg)
    source, target = paths.model_dir("pruned"), paths.model_dir("quantized")
    if not (source / "config.json").is_file():
        raise DataError(f"{source}: no model found (its config.json is missing); run `dvc repro prune` first")
    model = load_model(source).eval()  # safetensors only; a truncated file or a non-finite weight stops here
    data = load_validation(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    before = check(model, data)

    with atomic_dir(target) as out:
        report = quantize.quantize_to(model, out, cfg, calibration_blocks=data["calibration"])
        if report["coverage"] < cfg.min_coverage:
            raise quantize.QuantizationError(
                f"{cfg.method} coverage {report['coverage']:.4f} ({report['int8_params'] or report.get('bf16_params')} "
                f"of {report['linear_params']} weight parameters) is below quantize.min_coverage "
                f"{cfg.min_coverage:.4f}; nothing written to {target}")
        tokenizer.save_pretrained(out)
        quantized = quantize.load_quantized(out)  # measured as saved: the numbers also prove it loads
        after = check(quantized, data)
        if not all(map(math.isfinite, after.values())):
            raise quantize.QuantizationError(f"{cfg.method}: the quantized model's validation loss or accuracy is not "
                                              f"finite ({after}); nothing written to {target}")
        gate_result = {"enabled": False}
        if cfg.gate is not None:  # against the teacher, before the new model replaces the old one
            val = gate.validation_data(cfg.check_max_examples)
            teacher = load_model(paths.model_dir("teacher")).eval()
            gate_result = gate.check("quantize", cfg.gate, gate.measure(quantized, val), gate.measure(teacher, val),
                                     str(target))
        task = {}
        if cfg.task_model and not applies(model):
            log.info("quantize.task_model: a classifier (task.head=classifier) is its own task model: nothing to add")
        elif cfg.task_model:
            task = task_model(model, quantized, out, cfg, data)
        write_bundle(out, "quantize", source=source, metrics={"method": cfg.method, "coverage": report["coverage"],
                                                              **after})
        weights_bytes = quantize.weights_bytes(out)
        task_bytes = (out / "task.onnx").stat().st_size if (out / "task.onnx").is_file() else None
    log.info("%s: coverage %.4f, validation loss %.4f -> %.4f, accuracy %.4f -> %.4f", cfg.method,
             report["coverage"], before["val_loss"], after["val_loss"], before["val_accuracy"], after["val_accuracy"])

    input_bytes = quantize.weights_bytes(source)
    stage.write_metrics(paths.METRICS / "quantize.json", {
        "method": cfg.method,
        "per_channel": cfg.per_channel,
        "calibration_blocks": cfg.calibration_blocks,
        "coverage": report["coverage"],
        "int8_params": report["int8_params"],
        "linear_params": report["linear_params"],
        "weights_bytes": weights_bytes,
        "input_weights_bytes": input_bytes,
        "bytes_ratio": round(weights_bytes / input_bytes, 4),
        **({"task_model_bytes": task_bytes} if task_bytes else {}),
        "input_val_loss": before["val_loss"], "val_loss": after["val_loss"],
        "val_loss_delta": round(after["val_loss"] - before["val_loss"], 4),
        "input_val_accuracy": before["val_accuracy"], "val_accuracy": after["val_accuracy"],
        "val_accuracy_delta": round(after["val_accuracy"] - before["val_accuracy"], 4),
        "val_examples": len(data["labels"]), "val_blocks": len(data["blocks"]),
        "gate": gate_result,
        **task,
    })


if __name__ == "__main__":
    stage.run(main)
