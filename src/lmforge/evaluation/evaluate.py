"""The components of the evaluate stage (its recipe is stages/evaluate.py): one model's row of measurements on
the test data, the comparison with the teacher, the environment, the checks of the inputs."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from lmforge import hardware, paths
from lmforge.artifacts import read_json
from lmforge.config import MODEL_NAMES, EvaluateConfig, ModelConfig
from lmforge.data.examples import nsp_pairs
from lmforge.data.processed import load_tokenizer
from lmforge.errors import ConfigError, DataError, missing_input, rerun_hint
from lmforge.evaluation import metrics, statistics
from lmforge.modeling.arch import context_length
from lmforge.modeling.family import is_encoder, kind_of
from lmforge.modeling.io import method_of, weights_bytes

log = logging.getLogger(__name__)

REFERENCE = "teacher"  # retention, speedup and compression are relative to this model
PPL_KIND = {"causal": "next-token", "masked": "masked-token", "pretraining": "masked-token", "classifier": None}
PREPROCESS_METRICS = paths.METRICS / "preprocess.json"
EVAL_BATCH_SIZE = 16
# a row's per-item correctness on the task test items (and on each external set), in the order of the
# prompts, the same items for every model: add_statistics takes them out of the row (they are not metrics)
CORRECT = "task_correct"
EXTERNAL_CORRECT = "external_correct"


def measure_model(name: str, model: Any, cfg: EvaluateConfig, general: list, domain: list, prompts: list,
                  labels: list, label_token_ids: list[int], seed: int, external: list,
                  validation: tuple[list, list]) -> dict[str, Any]:
    """One row of the report: size, perplexities, accuracy (and on each external set, and on the task's
    validation split: `validation` = (prompts, labels), the split settings are chosen on), latency, throughput;
    and the per-item correctness behind each test accuracy (CORRECT, EXTERNAL_CORRECT) for add_statistics."""
    model_config = read_json(paths.model_dir(name) / "config.json")
    _check_seq_len(name, model_config, [general, domain, prompts, *(s.prompts for s in external)],
                   cfg.latency_seq_len)
    vocab_size = model_config["vocab_size"]
    kind = kind_of(model_config)
    row: dict[str, Any] = dict(metrics.count_parameters(model))
    row["bytes_on_disk"] = weights_bytes(paths.model_dir(name))
    row["ppl_kind"] = PPL_KIND[kind]
    if kind == "causal":
        row["ppl_general"] = metrics.perplexity(model, general, EVAL_BATCH_SIZE)
        row["ppl_domain"] = metrics.perplexity(model, domain, EVAL_BATCH_SIZE)
    elif kind in ("masked", "pretraining"):  # an encoder's LM: the same masked positions for every model
        tokenizer = load_tokenizer()  # its [MASK], [CLS] and [SEP]
        masked = {"mask_token_id": tokenizer.mask_token_id, "special_ids": tokenizer.all_special_ids, "seed": seed}
        row["ppl_general"] = metrics.masked_perplexity(model, general, EVAL_BATCH_SIZE, **masked)
        row["ppl_domain"] = metrics.masked_perplexity(model, domain, EVAL_BATCH_SIZE, **masked)
    else:  # a classifier has no LM head
        row["ppl_general"] = row["ppl_domain"] = None
    if kind == "pretraining":
        pairs = nsp_pairs(datasets.Dataset.from_dict({"input_ids": general}), tokenizer.cls_token_id,
                          tokenizer.sep_token_id, seed)
        row["nsp_accuracy"] = metrics.nsp_accuracy(model, pairs, EVAL_BATCH_SIZE)
    if kind in ("masked", "pretraining"):  # no task head: task.head=classifier is added by finetune
        row["accuracy"] = None
        row["latency_p50_ms"] = row["latency_p90_ms"] = row["tokens_per_s"] = None
        log.info("evaluate %s: masked-token ppl general %.2f, domain %.2f%s (an encoder without a task head: "
                 "no accuracy, no latency)", name, row["ppl_general"], row["ppl_domain"],
                 f", next-sentence accuracy {row['nsp_accuracy']:.3f}" if "nsp_accuracy" in row else "")
        return row
    row[CORRECT] = metrics.task_correct(model, prompts, labels, label_token_ids, EVAL_BATCH_SIZE)
    row["accuracy"] = sum(row[CORRECT]) / len(row[CORRECT])
    row["validation_accuracy"] = metrics.task_accuracy(model, *validation, label_token_ids, EVAL_BATCH_SIZE)
    if external:
        row[EXTERNAL_CORRECT] = {s.name: metrics.task_correct(model, s.prompts, s.labels, label_token_ids,
                                                              EVAL_BATCH_SIZE) for s in external}
        row["external_accuracy"] = {name: sum(c) / len(c) for name, c in row[EXTERNAL_CORRECT].items()}
    lat = metrics.latency(model, cfg.latency_seq_len, cfg.latency_warmup, cfg.latency_runs,
                          vocab_size, threads=cfg.threads, seed=seed)
    row["latency_p50_ms"], row["latency_p90_ms"] = lat["p50_ms"], lat["p90_ms"]
    row["tokens_per_s"] = metrics.throughput(model, cfg.throughput_batch, cfg.latency_seq_len,
                                             cfg.throughput_runs, vocab_size, threads=cfg.threads,
                                             seed=seed)
    return row


def width(model_config: dict) -> int:
    return int(model_config.get("n_embd") or model_config.get("hidden_size") or 512)


def quantized_method(name: str) -> str | None:
    if name != "quantized":
        return None
    return method_of(paths.model_dir(name))


def models_to_measure(models: list[str], model_cfg: ModelConfig | None) -> list[str]:
    """evaluate.models, with `base` first when the chain starts from a pretrained model."""
    pretrained = model_cfg is not None and model_cfg.init == "pretrained"
    if "base" in models and not pretrained:
        raise ConfigError("invalid value in 'evaluate.models': 'base' (models/base holds weights only with "
                          "model.init=pretrained; model.init is scratch)")
    if pretrained and is_encoder(model_cfg.arch):  # a bare encoder: no head to measure anything with
        if "base" in models:
            raise ConfigError("invalid value in 'evaluate.models': 'base' (a pretrained encoder is stored without "
                              "an MLM or task head: there is nothing to measure it with; pretrain adds the heads)")
        return models
    return models if "base" in models or not pretrained else ["base", *models]


def environment(threads: int) -> dict[str, Any]:
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": threads, "cpu": hardware.cpu_model(),
            "cpu_flags": " ".join(hardware.cpu_flags()),
            "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}


def check_inputs(models: list[str]) -> None:
    """Fail before any work if a model or data folder is missing, naming every one and its stage."""
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ConfigError(f"invalid value in 'evaluate.models': {unknown[0]!r} "
                          f"(expected names from {', '.join(MODEL_NAMES)})")
    if not models:
        raise ConfigError("'evaluate.models' is empty: name at least one model of the chain")
    needed = [paths.LM_GENERAL, paths.LM_DOMAIN, paths.TASK, paths.TASK_META, *map(paths.model_dir, models)]
    missing = [f"{p} ({rerun_hint(p)})" for p in needed
               if not (p / "config.json" if p.parent == paths.MODELS else p).exists()]
    if missing:
        raise DataError("evaluate needs inputs that are missing: " + "; ".join(missing))


def load_split(path: Path, split: str = "test", limit: int | None = None) -> datasets.Dataset:
    """One split of a processed DatasetDict (its first `limit` rows when given); a missing or empty one fails."""
    try:
        splits = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise missing_input(path, f"cannot be loaded as a dataset: {exc}") from exc
    if not isinstance(splits, datasets.DatasetDict) or split not in splits or len(splits[split]) == 0:
        raise missing_input(path, f"expected a DatasetDict with a non-empty '{split}' split")
    rows = splits[split]
    return rows if limit is None else rows.select(range(min(limit, len(rows))))


def _check_seq_len(name: str, model_config: dict, sequences: list[list[list[int]]], latency_len: int) -> None:
    """A sequence longer than the position table would crash GPT-2 deep inside; say so plainly."""
    limit = context_length(model_config)
    if limit is None:
        return
    if latency_len > limit:
        raise ConfigError(f"invalid value for 'evaluate.latency_seq_len': {latency_len} "
                          f"(expected <= {limit}, the context length of models/{name})")
    longest = max(len(s) for group in sequences for s in group)
    if longest > limit:
        raise DataError(f"test data has a sequence of {longest} tokens, longer than the {limit} "
                        f"positions of models/{name}")


def add_relative(results: dict[str, dict[str, Any]]) -> None:
    """Retention, speedup and compression of every model against the teacher (None without one)."""
    ref = results.get(REFERENCE)
    if ref is None:
        log.warning("'%s' is not among the evaluated models: no retention or speedup", REFERENCE)
    for row in results.values():
        row["accuracy_retention"] = _ratio(row["accuracy"], ref and ref["accuracy"])
        row["ppl_general_retention"] = _ratio(ref and ref["ppl_general"], row["ppl_general"])
        row["ppl_domain_retention"] = _ratio(ref and ref["ppl_domain"], row["ppl_domain"])
        row["speedup_p50"] = _ratio(ref and ref["latency_p50_ms"], row["latency_p50_ms"])
        row["throughput_ratio"] = _ratio(row["tokens_per_s"], ref and ref["tokens_per_s"])
        row["compression"] = _ratio(ref and ref["bytes_on_disk"], row["bytes_on_disk"])


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def add_statistics(results: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """How sure each accuracy is (lmforge.evaluation.statistics): every row with an accuracy gets
    `accuracy_ci95` (and `external_accuracy_ci95` per external set), every one but the teacher `vs_teacher`,
    the paired McNemar test against the teacher on the same items (None without a teacher with an accuracy).
    Takes the per-item correctness out of the rows and returns it, by model."""
    correct = {name: {"task": row.pop(CORRECT), **row.pop(EXTERNAL_CORRECT, {})}
               for name, row in results.items() if CORRECT in row}
    ref = correct.get(REFERENCE, {}).get("task")
    for name, row in results.items():
        if name not in correct:  # an encoder without a task head: no accuracy
            row["accuracy_ci95"] = None
            continue
        row["accuracy_ci95"] = list(statistics.accuracy_interval(correct[name]["task"], seed))
        if "external_accuracy" in row:
            row["external_accuracy_ci95"] = {ext: list(statistics.accuracy_interval(correct[name][ext], seed))
                                             for ext in row["external_accuracy"]}
        if name != REFERENCE:
            row["vs_teacher"] = None if ref is None else statistics.compare(correct[name]["task"], ref, seed)
    return correct


def rounded(row: Any, key: str = "") -> Any:
    """Four decimals is below measurement noise and keeps `dvc metrics diff` readable; a p-value keeps four
    significant digits (a small p is not 0). Lists and dicts (an interval, vs_teacher) are rounded inside."""
    if isinstance(row, dict):
        return {k: rounded(v, k) for k, v in row.items()}
    if isinstance(row, list):
        return [rounded(v, key) for v in row]
    if isinstance(row, float) and key.startswith("p_") and math.isfinite(row):
        return float(f"{row:.4g}")
    return round(row, 4) if isinstance(row, float) else row


def baselines() -> dict[str, dict[str, float]]:
    """The task baselines measured by preprocess, when it wrote them."""
    if not PREPROCESS_METRICS.is_file():
        log.warning("%s not found: the report has no baseline rows", PREPROCESS_METRICS)
        return {}
    try:
        data = read_json(PREPROCESS_METRICS)
    except json.JSONDecodeError as exc:
        raise DataError(f"{PREPROCESS_METRICS}: not valid JSON ({exc})") from exc
    names = {"bag_of_words": "bow_baseline_accuracy", "majority": "majority_accuracy"}
    return {name: {"accuracy": data[key]} for name, key in names.items() if key in data}
