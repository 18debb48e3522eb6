"""Measure every model of the chain and write metrics/evaluate.json, plots/pareto.json and reports/.

    dvc repro evaluate            # or, from the repository root: python stages/evaluate.py

The recipe: check the model names and that every input exists (naming the stage to rerun) -> load the test
data, the task baselines and any external test sets -> note the environment -> measure each model on the same
data and CPU (lmforge.evaluation.evaluate.measure_model) -> compare with the teacher (ratios; accuracy
intervals and a paired test on the same items, lmforge.evaluation.statistics) -> the report and the
metrics (lmforge.report: evaluate.json, headline.json, Pareto data, summary.md, PNG). No gate: evaluate
judges every model against `evaluate.gate` in the report's recommendation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from transformers import AutoTokenizer

from lmforge import hardware, paths, stage
from lmforge.artifacts import read_json
from lmforge.config import Params
from lmforge.data.external import load_external_sets
from lmforge.data.processed import encode_for, load_tokenizer, own_tokenizer, retokenize_blocks
from lmforge.evaluation.evaluate import (
    add_relative,
    add_statistics,
    baselines,
    check_inputs,
    environment,
    load_split,
    measure_model,
    models_to_measure,
    quantized_method,
    rounded,
    width,
)
from lmforge.modeling.io import load_model
from lmforge.report import format_value, write_report

# seed: an encoder's masked positions, the bootstrap resamples of the accuracy intervals; model.init: whether
# the base model is measured too; model.arch: an encoder's base has no head to measure
PARAMS = ("seed", "evaluate", "model.init", "model.arch")
log = logging.getLogger("lmforge.evaluate")


def main(params: Params) -> dict[str, Any]:
    cfg, seed = params.evaluate, params.seed

    # check: the model names, and every model and data folder, before any work
    models = models_to_measure(cfg.models, params.model)
    check_inputs(models)

    # load inputs: the test data, the baselines (a broken file fails before minutes of measuring), external sets
    general = list(load_split(paths.LM_GENERAL, limit=cfg.max_lm_blocks)["input_ids"])
    domain = list(load_split(paths.LM_DOMAIN, limit=cfg.max_lm_blocks)["input_ids"])
    task = load_split(paths.TASK, limit=cfg.max_task_examples)
    validation = load_split(paths.TASK, "validation", limit=cfg.max_task_examples)  # what settings are chosen on
    labels = list(task["label"])
    task_meta = read_json(paths.TASK_META)
    label_token_ids = task_meta["label_token_ids"]
    task_baselines = baselines()
    external = load_external_sets(cfg.external, load_tokenizer() if cfg.external else None, task_meta)

    # measure every model on the same data and CPU
    env = environment(cfg.threads)  # before measuring: the load average then is other processes' load
    # fp32 models run in this precision (auto: measured at the widest model); quantized ones in their own
    # dtype and runtime
    widest = max(width(read_json(paths.model_dir(name) / "config.json")) for name in cfg.models)
    env["precision"] = hardware.choose_precision(cfg.precision, kind="inference", width=widest)
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(models, start=1):
        log.info("evaluate [%d/%d] %s: loading %s", i, len(models), name, paths.model_dir(name))
        model = load_model(paths.model_dir(name), threads=cfg.threads)  # in its own format and runtime
        # the quantized model runs in its own dtype and runtime: its row names the method
        precision = quantized_method(name) or env["precision"]["precision"]
        # the same test items for every model, each read in the model's own tokenizer (a student of another
        # family has its own; the teacher's family reads the stored ids)
        inputs = in_own_tokenizer(name, task, validation, general, domain, external)
        with hardware.autocast(precision):
            results[name] = measure_model(name, model, cfg, inputs["general"], inputs["domain"], inputs["prompts"],
                                          labels, label_token_ids, seed, inputs["external"],
                                          (inputs["validation"], list(validation["label"])))
        results[name]["precision"] = precision
        row = results[name]
        if row["accuracy"] is not None:  # an encoder without a task head logged its own line
            log.info("evaluate %s: ppl general %s, ppl domain %s, accuracy %.3f, p50 %.2f ms, %.0f tokens/s", name,
                     format_value(row["ppl_general"], "{:.2f}"), format_value(row["ppl_domain"], "{:.2f}"),
                     row["accuracy"], row["latency_p50_ms"], row["tokens_per_s"])
        del model
    add_relative(results)  # retention, speed-up and compression against the teacher
    # a bootstrap 95% interval of every accuracy, and a paired McNemar test of every model against the
    # teacher on the same test items (the per-item correctness stays out of the metrics)
    add_statistics(results, seed)

    # metrics and report
    metrics = {
        "models": {name: rounded(row) for name, row in results.items()},
        "baselines": task_baselines,
        "external": {s.name: s.stats for s in external},
        "data": {"lm_blocks_general": len(general), "lm_blocks_domain": len(domain),
                 "task_examples": len(labels), "validation_examples": len(validation),
                 "latency_seq_len": cfg.latency_seq_len, "throughput_batch": cfg.throughput_batch},
        "environment": env,
        "gate": dataclasses.asdict(cfg.gate),  # what the report's recommendation must pass
    }
    write_report(metrics)
    return metrics


def in_own_tokenizer(name: str, task, validation, general: list, domain: list, external: list) -> dict[str, Any]:
    """The test (and validation) inputs as model `name` reads them: the stored token ids when its folder's
    tokenizer is data/processed's (or it has none: the base manifest), else the same texts and blocks encoded
    again."""
    folder = paths.model_dir(name)
    own = own_tokenizer(AutoTokenizer.from_pretrained(folder)) if (folder / "tokenizer_config.json").is_file() \
        else None
    if own is None:
        return {"prompts": list(task["prompt_ids"]), "validation": list(validation["prompt_ids"]),
                "general": general, "domain": domain, "external": external}
    log.info("evaluate %s: its own tokenizer (%s): the test texts encoded again", name, type(own).__name__)
    return {"prompts": encode_for(own, list(task["text"])), "validation": encode_for(own, list(validation["text"])),
            "general": retokenize_blocks(general, own),
            "domain": retokenize_blocks(domain, own),
            "external": [dataclasses.replace(s, prompts=encode_for(own, s.texts)) for s in external]}


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
