"""One way to train any model of the chain: the Hugging Face Trainer, checkpoints that resume, DVCLive curves.

The Trainer brings mixed precision, gradient accumulation, checkpoint resume, DDP and FSDP; lmforge
only decides what to train on, where checkpoints live and when an old checkpoint must not be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from dvclive import Live
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.integrations import DVCLiveCallback
from transformers.trainer_utils import get_last_checkpoint

from lmforge import paths
from lmforge.artifacts import atomic_dir
from lmforge.config import TrainConfig
from lmforge.training.data import PadCollator
from lmforge.training.losses import lm_loss

log = logging.getLogger(__name__)


class LMTrainer(Trainer):
    """The Hugging Face Trainer with the loss averaged per example (see lmforge.training.losses)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: the Trainer scales it for accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = lm_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


class TrainingStepDVCLiveCallback(DVCLiveCallback):
    """DVCLive's callback counts one step per log call; plot the curves against the optimizer step instead."""

    def on_log(self, args, state, control, **kwargs):
        if self.live is not None:
            self.live.step = state.global_step
        super().on_log(args, state, control, **kwargs)


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        prediction_loss_only=True,  # evaluation needs the loss only: do not gather vocabulary-sized logits
        seed=seed,
        data_seed=seed,
        include_num_input_tokens_seen=True,
        remove_unused_columns=False,  # the collator needs `labels` as prepared by lmforge
        dataloader_num_workers=0,
        report_to="none",  # DVCLive is attached explicitly, so it never rewrites dvc.yaml
        use_cpu=not torch.cuda.is_available(),
    )


def fingerprint(config: Any, inputs: list[Path]) -> str:
    """Identity of a training run: its parameters and the bytes of its inputs."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
                                       sort_keys=True, default=str).encode())
    for root in inputs:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else [Path(root)]
        for file in files:
            digest.update(str(file).encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def checkpoint_dir(stage: str, run_id: str) -> tuple[Path, str | None]:
    """The stage's checkpoint folder and the checkpoint to resume from, if one belongs to this very run.

    Checkpoints of a run with other parameters or inputs are deleted rather than resumed.
    """
    folder = paths.CHECKPOINTS / stage
    stamp = folder / "run_id"
    if folder.exists() and (not stamp.exists() or stamp.read_text().strip() != run_id):
        log.info("%s: discarding checkpoints of a different run", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(run_id + "\n")
    last = get_last_checkpoint(str(folder))
    if last:
        log.info("resuming from %s", last)
    return folder, last


def fit(
    stage: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: Dataset,
    eval_sets: dict[str, Dataset],
    cfg: TrainConfig,
    seed: int,
    run_id: str,
    output: Path,
    trainer_cls: type[Trainer] = LMTrainer,
    finalize: Callable[[PreTrainedModel], None] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train `model`, save it to `output` (atomically, with the tokenizer) and return the stage metrics.

    `finalize` runs on the trained model before it is saved (pruning makes its masks permanent there).
    """
    folder, resume_from = checkpoint_dir(stage, run_id)
    live = Live(dir=str(paths.DVCLIVE / stage), dvcyaml=None, save_dvc_exp=False, resume=resume_from is not None)
    trainer = trainer_cls(
        model=model,
        args=training_arguments(cfg, folder, seed),
        data_collator=PadCollator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=eval_sets,
        processing_class=tokenizer,
        callbacks=[TrainingStepDVCLiveCallback(live=live)],
        **trainer_kwargs,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d parameters, %d steps of %d examples", stage, n_params, cfg.max_steps,
             cfg.batch_size * cfg.grad_accum_steps * trainer.args.world_size)
    result = trainer.train(resume_from_checkpoint=resume_from)
    final = trainer.evaluate()
    if finalize is not None:
        finalize(model)
    if trainer.is_world_process_zero():
        with atomic_dir(output) as out:
            trainer.save_model(str(out))
            tokenizer.save_pretrained(str(out))
        log.info("%s: saved %s", stage, output)

    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "parameters": n_params,
        "train_loss": round(result.training_loss, 4),
        "train_runtime_s": round(result.metrics["train_runtime"], 2),
        "train_tokens_per_s": round(trainer.state.num_input_tokens_seen / result.metrics["train_runtime"], 1),
    }
    for name in eval_sets:
        loss = final[f"eval_{name}_loss"]
        metrics[f"eval_{name}_loss"] = round(loss, 4)
        if name != "task":  # the task loss is on one label word: its exponent is no perplexity
            metrics[f"eval_{name}_perplexity"] = round(math.exp(loss), 3)
    return metrics
