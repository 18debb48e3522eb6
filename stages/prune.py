"""Prune the student with the configured method(s), recover with KD from the teacher (its cached outputs with
prune.recovery.data=transfer), gate, save.

    dvc repro prune            # or, from the repository root: python stages/prune.py
    dvc exp run -S prune=wanda        # or prune=lowrank, prune=structured_lowrank (conf/prune/)

The recipe, top to bottom: load -> check the config against the model -> calibrate -> apply the
method(s) -> recover (KD, the pruned structure held fixed) -> gate against the teacher -> save -> metrics.
"""

from __future__ import annotations

from typing import Any

from lmforge import paths, stage
from lmforge.config import Params, RecoveryConfig
from lmforge.errors import require

PARAMS = ("seed", "prune")


def main(params: Params) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: importing torch and transformers takes seconds,
    # and a bad parameter should fail at once
    from transformers import AutoTokenizer

    from lmforge.artifacts import dir_bytes
    from lmforge.compression import lowrank, methods
    from lmforge.compression.prune import make_permanent
    from lmforge.data import processed as data
    from lmforge.evaluation import metrics as measures
    from lmforge.modeling.checks import load_hf
    from lmforge.modeling.family import head_of
    from lmforge.training.distill import DistillationTrainer
    from lmforge.training.runner import fingerprint, fit, model_writer

    cfg, seed = params.prune, params.seed
    source, teacher_dir = paths.model_dir("student"), paths.model_dir("teacher")
    output = paths.model_dir("pruned")

    # load, and refuse a configuration this model cannot take before any work
    model = load_hf(source)  # safetensors only; a truncated file or a non-finite weight stops here
    tokenizer = AutoTokenizer.from_pretrained(source)  # the student's own (another family's, with init=pretrained)
    own = data.own_tokenizer(tokenizer)  # None: the teacher's, the stored token ids serve
    teacher = load_hf(teacher_dir)
    methods.check(cfg, model)
    cached = cfg.recovery.data == "transfer"
    if cached and cfg.recovery.max_steps > 0:
        require(paths.TRANSFER / "examples")
    val = data.validation_data(cfg.validation_examples, own)  # each model reads the task in its own tokenizer
    metrics: dict[str, Any] = {"method": cfg.method, "before": _describe(model),
                               "validation": {"teacher": measures.measure(teacher,
                                                                          data.validation_data(cfg.validation_examples)),
                                              "student": measures.measure(model, val)}}

    # calibrate and apply the method(s), in order (prune=none: no method, the student passes through)
    blocks = data.calibration_blocks(cfg.calibration.samples, seed, own) if cfg.method else None
    model, metrics["methods"] = methods.apply(model, cfg, blocks)
    metrics["calibration"] = {"samples": len(blocks), "tokens": int(blocks.numel())} if blocks is not None else None
    metrics["validation"]["pruned"] = measures.measure(model, val)

    # recover: a short KD run from the teacher; masks, sliced shapes and factors stay as they are
    recovery: RecoveryConfig = cfg.recovery  # a training run composed from conf/train/base.yaml
    if recovery.max_steps > 0:
        head = head_of(model)  # as distill: the teacher's (a pretrained student's: a classifier, as the teacher's)
        if cached:  # the transfer set with the teacher's cached outputs: the teacher does not run
            train_set = data.transfer_train_set(tokenizer)
        else:
            train_set = data.mixture_train_set(recovery.mixture, recovery.max_steps * recovery.batch_size, seed,
                                               head=head)
        eval_sets = data.eval_sets(cfg.validation_examples, with_task=True, head=head, with_lm=head == "lm",
                                   tokenizer=own)
        inputs = [source, teacher_dir, paths.PROCESSED] + ([paths.TRANSFER / "examples"] if cached else [])
        run_id = fingerprint({"seed": seed, "prune": cfg}, inputs)
        metrics["recovery"] = fit("prune", model, tokenizer, train_set, eval_sets, recovery.train_config(), seed,
                                  run_id, None, trainer_cls=DistillationTrainer, teacher=None if cached else teacher,
                                  kd=recovery.kd, label_token_ids=data.task_meta()["label_token_ids"])
        metrics["recovery"]["data"] = recovery.data
    make_permanent(model)  # masks folded into plain weights (a no-op without masks)
    recovered = metrics["validation"]["recovered"] = measures.measure(model, val)

    # gate against the teacher, before anything is written
    metrics["gate"] = stage.gate("prune", cfg.gate, output, lambda: (recovered, metrics["validation"]["teacher"]))

    # save: a plain HF folder, or safetensors + lowrank.json when layers are factored
    factored = bool(lowrank.factored_layers(model))
    manifest = {"method": cfg.method, "activation_aware": cfg.activation_aware, "base_model": source.as_posix()}
    write = model_writer(model, "prune", (lambda folder: lowrank.save_lowrank(model, folder, manifest=manifest))
                         if factored else None)  # every rank: FSDP gathers the weights here
    stage.save(output, "prune", write, tokenizer=tokenizer, metrics={  # the card: the stage's own validation numbers
        "method": cfg.method, "gate": metrics["gate"], "val_accuracy": recovered["accuracy"],
        "eval_general_perplexity": recovered["ppl_general"], "eval_domain_perplexity": recovered["ppl_domain"]})

    # metrics
    metrics["after"] = _describe(model)
    metrics["format"] = "lowrank" if factored else "hf"
    metrics["bytes_on_disk"] = {"before": dir_bytes(source), "after": dir_bytes(output)}
    stage.write_metrics(paths.METRICS / "prune.json", metrics)
    return metrics


def _describe(model) -> dict[str, Any]:
    """Parameters, non-zero parameters, and zeros per block layer type, measured from the weights."""
    from lmforge.compression.prune import sparsity_report  # torch: imported after validation, as in main

    report = sparsity_report(model)
    return {"params": report["params"], "nonzero_params": report["nonzero_params"],
            "sparsity": report["overall"]["sparsity"],
            "per_type": {t: {"sparsity": round(c["sparsity"], 4), "weights": c["weights"]}
                         for t, c in report["per_type"].items()}}


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
