"""One way to train any model of the chain: the Hugging Face Trainer, checkpoints that resume, DVCLive curves.

The Trainer brings mixed precision, gradient accumulation, checkpoint resume, DDP and FSDP; lmforge
only decides what to train on, where checkpoints live and when an old checkpoint must not be reused.

Under `torchrun` or `accelerate launch` every rank runs the whole stage. The Trainer shards the data
and averages gradients; lmforge keeps the file system to rank 0: it alone discards stale checkpoints,
writes DVCLive curves, the model and the metrics, and the other ranks wait at a barrier where it matters.
`batch_size` is the global batch: each of N ranks takes batch_size / N, so a run gives the same
optimisation under any launcher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from dvclive import Live
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.integrations import DVCLiveCallback
from transformers.trainer_utils import get_last_checkpoint

from lmforge import paths
from lmforge.artifacts import replace_dir
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.modelcard import write_bundle
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


def world_size() -> int:
    """Processes of this run, as set by torchrun / accelerate launch (1 under plain `python`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int, processes: int = 1) -> TrainingArguments:
    if cfg.batch_size % processes:
        raise ConfigError(f"params.yaml: batch_size={cfg.batch_size} is the global batch and must be divisible "
                          f"by the number of processes ({processes})")
    per_device = cfg.batch_size // processes
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
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
        use_cpu=not cuda,
        ddp_backend="gloo" if processes > 1 and not cuda else None,
        bf16=cfg.precision == "bf16",
        optim=cfg.optim,
        torch_compile=cfg.torch_compile,
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


def checkpoint_dir(stage: str, run_id: str, state: PartialState | None = None) -> tuple[Path, str | None]:
    """The stage's checkpoint folder and the checkpoint to resume from, if one belongs to this very run.

    Checkpoints of a run with other parameters or inputs are deleted rather than resumed. With several
    processes only the main one touches the folder; the others wait, then read the same answer.
    """
    folder = paths.CHECKPOINTS / stage
    if state is None or state.is_main_process:
        stamp = folder / "run_id"
        if folder.exists() and (not stamp.exists() or stamp.read_text().strip() != run_id):
            log.info("%s: discarding checkpoints of a different run", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(run_id + "\n")
        for partial in incomplete_checkpoints(folder):
            log.info("%s: discarding a checkpoint that a killed run left incomplete", partial)
            shutil.rmtree(partial)
    if state is not None:
        state.wait_for_everyone()
    last = get_last_checkpoint(str(folder))
    if last:
        log.info("resuming from %s", last)
    return folder, last


def incomplete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints without a readable trainer_state.json, which the Trainer writes last: a run killed while
    saving left them half-written (the previous, complete one is only rotated out after it)."""
    partial = []
    for checkpoint in folder.glob("checkpoint-*"):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            partial.append(checkpoint)
    return partial


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def truncate_curves(live_dir: Path, step: int) -> None:
    """Drop the DVCLive rows logged after `step`: a killed run logged them, the resumed one logs them again."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        column = lines[0].split("\t").index("step")
        kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[column]) <= step]
        tsv.write_text("\n".join(kept) + "\n")


def open_live(stage: str, resume_from: str | None) -> Live:
    """The stage's DVCLive run: continued after a resumed checkpoint, started over otherwise."""
    live_dir = paths.DVCLIVE / stage
    if resume_from is not None:
        truncate_curves(live_dir, checkpoint_step(resume_from))
    return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume_from is not None)


def save_trained(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, output: Path, state: PartialState,
                 stage: str, metrics: dict[str, Any]) -> None:
    """Save the model, tokenizer, task and model card to `output` atomically. Every rank calls the Trainer's
    save (FSDP gathers the full state dict there); only the main process writes and renames."""
    tmp = output.with_name(f".{output.name}.tmp-trained")
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(tmp))
    if state.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        write_bundle(tmp, stage, metrics=metrics)
        replace_dir(tmp, output)
    state.wait_for_everyone()


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
    processes = world_size()
    args = training_arguments(cfg, paths.CHECKPOINTS / stage, seed, processes)
    _ = args.device  # sets up the Trainer's PartialState: under a launcher, the process group (gloo on CPU)
    state = PartialState()
    run_id = hashlib.sha256(f"{run_id} processes={processes}".encode()).hexdigest()
    folder, resume_from = checkpoint_dir(stage, run_id, state)
    model.set_attn_implementation(cfg.attn_implementation)
    callbacks = [TrainingStepDVCLiveCallback(live=open_live(stage, resume_from))] if state.is_main_process else []
    trainer = trainer_cls(
        model=model,
        args=args,
        data_collator=PadCollator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=eval_sets,
        processing_class=tokenizer,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d parameters, %d steps of %d examples (%d per process, %d processes)", stage, n_params,
             cfg.max_steps, cfg.batch_size * cfg.grad_accum_steps, args.per_device_train_batch_size, processes)
    result = trainer.train(resume_from_checkpoint=resume_from)
    final = trainer.evaluate()
    if finalize is not None:
        finalize(model)

    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume_from) if resume_from else 0,
        "processes": processes,
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
    save_trained(trainer, tokenizer, output, state, stage, metrics)  # the card carries these metrics
    if state.is_main_process:
        log.info("%s: saved %s", stage, output)
    return metrics
