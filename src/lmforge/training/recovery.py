"""The prune stage: prune the student, recover with a short KD run from the teacher, make it permanent.

During recovery the pruning masks stay attached (torch.nn.utils.prune reparametrisation), so the
optimizer cannot revive a pruned weight; they are folded into plain weights before saving.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import AutoModelForCausalLM

from lmforge import paths
from lmforge.artifacts import atomic_dir
from lmforge.compression.prune import l1_unstructured, make_permanent, sparsity_report
from lmforge.config import RecoveryConfig, TrainConfig
from lmforge.modelcard import write_bundle
from lmforge.training import data
from lmforge.training.distill import DistillationTrainer
from lmforge.training.runner import fingerprint, fit

log = logging.getLogger(__name__)


def recovery_train_config(cfg: RecoveryConfig) -> TrainConfig:
    steps = cfg.max_steps
    return TrainConfig(
        max_steps=steps, batch_size=cfg.batch_size, grad_accum_steps=1, learning_rate=cfg.learning_rate,
        lr_scheduler="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=max(1, steps // 10), eval_steps=steps, save_steps=max(1, steps // 2),
        eval_max_examples=256, precision="fp32", attn_implementation="sdpa", optim="adamw_torch",
        torch_compile=False,
    )


def prune(params: dict[str, Any]) -> dict[str, Any]:
    cfg = params["prune"]
    source = data.require(paths.model_dir("student"), "distill")
    teacher_dir = data.require(paths.model_dir("teacher"), "finetune")
    tokenizer = data.load_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(source)
    before = sparsity_report(model)
    l1_unstructured(model, cfg.amount)
    log.info("pruned %.1f%% of the block weights (L1, unstructured)",
             100 * sparsity_report(model)["overall"]["sparsity"])

    metrics: dict[str, Any] = {"method": cfg.method, "amount": cfg.amount}
    recovery = cfg.recovery
    if recovery.max_steps > 0:
        train_cfg = recovery_train_config(recovery)
        examples = recovery.max_steps * recovery.batch_size
        train_set = data.mixture_train_set(recovery.mixture, examples, params["seed"])
        eval_sets = data.eval_sets(train_cfg.eval_max_examples, with_task=True)
        run_id = fingerprint({"seed": params["seed"], "prune": cfg}, [source, teacher_dir, paths.PROCESSED])
        metrics["recovery"] = fit(
            "prune", model, tokenizer, train_set, eval_sets, train_cfg, params["seed"], run_id,
            paths.model_dir("pruned"), trainer_cls=DistillationTrainer, finalize=make_permanent,
            teacher=AutoModelForCausalLM.from_pretrained(teacher_dir), temperature=recovery.temperature,
            alpha_kd=recovery.alpha_kd, alpha_ce=recovery.alpha_ce,
        )
    else:
        make_permanent(model)
        if int(os.environ.get("RANK", "0")) == 0:  # under a launcher, every rank runs this: one writes
            with atomic_dir(paths.model_dir("pruned")) as out:
                model.save_pretrained(out)
                tokenizer.save_pretrained(out)
                write_bundle(out, "prune", metrics={"amount": cfg.amount, **sparsity_report(model)["overall"]})

    metrics["sparsity_before"] = before["overall"]["sparsity"]
    metrics.update(sparsity_report(model))
    return metrics
