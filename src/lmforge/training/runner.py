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
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from dvclive import Live
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)
from transformers.integrations import DVCLiveCallback
from transformers.trainer_utils import get_last_checkpoint

from lmforge import hardware, paths, quiet
from lmforge.artifacts import write_json, write_text
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.locks import lock_stage, release_stage
from lmforge.modeling.card import save_folder
from lmforge.modeling.checks import check_finite
from lmforge.modeling.family import is_encoder, kind_of_model
from lmforge.training.collate import collator_for
from lmforge.training.objectives import training_loss

log = logging.getLogger(__name__)

RUN_FILE = "lmforge_run.json"  # in each checkpoint: training seconds of the whole run up to that step
TRAINING_AIDS = ("replay_head.", "hidden_projection.")  # modules attached for training only, removed before saving


class TrainingDiverged(LmforgeError):
    """A non-finite loss or weight: training stops rather than save a NaN model."""


class LMTrainer(Trainer):
    """The Hugging Face Trainer with the loss of the model's kind (lmforge.training.objectives), averaged per
    example (see lmforge.training.losses)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: the Trainer scales it for accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = training_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Checked on every micro-batch: the Trainer's logging_nan_inf_filter would otherwise hide a NaN loss
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}")
        return loss


class TrainingStepDVCLiveCallback(DVCLiveCallback):
    """DVCLive's callback counts one step per log call; plot the curves against the optimizer step instead,
    and write each metric at most once per step (the final evaluation repeats the last in-training one, a
    rerun of a complete run repeats it again): a curve never holds a step twice."""

    def __init__(self, live: Live) -> None:
        super().__init__(live=live)
        self.last_step: dict[str, int] = {}  # curve file (relative to plots/metrics) -> its last step
        metrics_dir = Path(live.plots_dir) / "metrics"
        for tsv in metrics_dir.rglob("*.tsv"):
            steps = curve_steps(tsv)
            if steps:
                self.last_step[tsv.relative_to(metrics_dir).with_suffix("").as_posix()] = max(steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        from dvclive.utils import standardize_metric_name

        if self.live is None or not state.is_world_process_zero:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        fresh = {}
        for key, value in (logs or {}).items():
            if key.endswith("model_preparation_time"):  # logged by an evaluation outside training: not a curve
                continue
            name = standardize_metric_name(key, "dvclive.huggingface")
            if self.last_step.get(name, -1) < state.global_step:
                fresh[key] = value
                self.last_step[name] = state.global_step
        if fresh:
            self.live.step = state.global_step
            super().on_log(args, state, control, logs=fresh, **kwargs)


class RunGuard(TrainerCallback):
    """Stops on a non-finite weight, warns on a diverging loss, logs the last step, and keeps the training time
    of the whole run in each checkpoint, so that a resumed run reports time and throughput of the whole run."""

    def __init__(self, stage: str, seconds_before: float | None, main_process: bool) -> None:
        self.stage, self.seconds_before, self.main_process = stage, seconds_before, main_process
        self.started = time.perf_counter()
        self.first_loss: float | None = None
        self.warned = False

    def seconds(self) -> float | None:
        """Training seconds of the whole run so far (None: a checkpoint of an older version lacks them)."""
        if self.seconds_before is None:
            return None
        return self.seconds_before + time.perf_counter() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        check_finite(model, f"{self.stage}: the model being trained, after step {state.global_step}",
                     error=TrainingDiverged)
        if state.global_step >= state.max_steps:
            control.should_log = True  # the curves and `train_loss` then cover every step of the run
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if self.first_loss is None:
            self.first_loss = loss
        elif loss > 2 * self.first_loss and not self.warned:
            self.warned = True
            log.warning("%s", divergence_warning(self.stage, loss, state.global_step, self.first_loss))

    def on_save(self, args, state, control, **kwargs):
        seconds = self.seconds()
        if self.main_process and seconds is not None:
            write_json(Path(args.output_dir) / f"checkpoint-{state.global_step}" / RUN_FILE,
                       {"global_step": state.global_step, "train_seconds": seconds})


def divergence_warning(stage: str, loss: float, step: int, first_loss: float) -> str:
    return (f"{stage}: training loss {loss:.3f} at step {step} is more than twice the first logged one "
            f"({first_loss:.3f}): the run is diverging (learning_rate too high? max_grad_norm?)")


def divergence(stage: str, log_history: list[dict[str, Any]]) -> str | None:
    """RunGuard's warning for the whole run, from the logged losses (a resumed or complete rerun restores the
    earlier ones with its checkpoint, so the stage's metrics say the same as the run that trained)."""
    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    first = losses[0][1] if losses else None
    return next((divergence_warning(stage, loss, step, first) for step, loss in losses[1:] if loss > 2 * first),
                None)


def world_size() -> int:
    """Processes of this run, as set by torchrun / accelerate launch (1 under plain `python`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int, processes: int = 1,
                       precision: str | None = None) -> TrainingArguments:
    """`precision`: the resolved one (lmforge.hardware.choose_precision); None: cfg.precision, which must
    then not be auto."""
    if cfg.batch_size % processes:
        raise ConfigError(f"params.yaml: batch_size={cfg.batch_size} is the global batch and must be divisible "
                          f"by the number of processes ({processes})")
    per_device = cfg.batch_size // processes
    cuda = torch.cuda.is_available()
    precision = precision or cfg.precision
    if precision == "auto":
        raise ValueError("training_arguments needs a resolved precision: use lmforge.hardware.choose_precision")
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
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        optim=cfg.optim,
        torch_compile=cfg.torch_compile,
        train_sampling_strategy=cfg.sampling,
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
        write_text(stamp, run_id + "\n")
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


def curve_steps(tsv: Path) -> list[int]:
    """The `step` column of a DVCLive curve file."""
    lines = tsv.read_text().splitlines()
    if not lines:
        return []
    column = lines[0].split("\t").index("step")
    return [int(line.split("\t")[column]) for line in lines[1:]]


def truncate_curves(live_dir: Path, step: int) -> None:
    """Drop the DVCLive rows logged after `step`: a killed run logged them, the resumed one logs them again."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        kept = [lines[0]] + [line for line, at in zip(lines[1:], curve_steps(tsv), strict=True) if at <= step]
        write_text(tsv, "\n".join(kept) + "\n")


def open_live(stage: str, resume_from: str | None) -> Live:
    """The stage's DVCLive run: continued after a resumed checkpoint, started over otherwise."""
    live_dir = paths.DVCLIVE / stage
    if resume_from is not None:
        truncate_curves(live_dir, checkpoint_step(resume_from))
    return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume_from is not None)


def run_seconds(checkpoint: str | Path) -> float | None:
    """Training seconds of the whole run up to `checkpoint` (None: not recorded, e.g. an older checkpoint)."""
    try:
        return float(json.loads((Path(checkpoint) / RUN_FILE).read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fsdp_units(model: PreTrainedModel) -> str:
    """The modules FSDP shards as one unit each, e.g. "GPT2Block x4, GPT2LMHeadModel x1": accelerate takes the
    blocks from the model's own `_no_split_modules` (GPT2Block, LlamaDecoderLayer, BertLayer)."""
    from torch.distributed.fsdp import FSDPModule

    counts = Counter(type(m).__name__.removeprefix("FSDP") for m in model.modules() if isinstance(m, FSDPModule))
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"


def whole_run_loss(state: TrainerState) -> float | None:
    """Mean training loss over every step of the run, from the logged interval means (a resumed run restores
    the earlier ones with the checkpoint; RunGuard logs the last step)."""
    total, previous = 0.0, 0
    for entry in state.log_history:
        if "loss" in entry and "step" in entry and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    return total / previous if previous else None


def gathered_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor] | None:
    """The whole model's weights when FSDP (fully_shard) has left each rank a shard of them, gathered on the main
    process (the other ranks get an empty dict); None when the model is whole on every rank. Every rank must call
    it: the gather is a collective, so a rank-0-only `save_pretrained` of a sharded model waits forever or saves
    shards."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # what accelerate's get_state_dict does for FSDP2 with FULL_STATE_DICT (the Trainer's save_model path)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied weight (GPT-2's lm_head and wte) comes back as two copies: one tensor again, so that save_pretrained
    # writes it once, as it does for an unsharded model
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first and name in full and first[id(param)] in full:
            full[name] = full[first[id(param)]]
        first.setdefault(id(param), name)
    return full


def model_writer(model: PreTrainedModel, stage: str,
                 write: Callable[[Path], object] | None = None) -> Callable[[Path], object]:
    """How `model` is written into a folder for `save_folder`: `model.save_pretrained`, or `write` for a format
    of its own (low-rank). Every rank calls it: under FSDP the full weights are gathered here first (a
    collective), and the main process's writer saves them as a plain `save_pretrained` folder."""
    state_dict = gathered_state_dict(model)
    if state_dict is None:
        return write or model.save_pretrained
    if write is not None:
        raise LmforgeError(f"{stage}: a format of its own cannot be written from an FSDP-sharded model; run this "
                           "stage with launcher python or torchrun")
    return lambda folder: model.save_pretrained(folder, state_dict=state_dict)


def prepare_fsdp_like_train(trainer: Trainer, max_steps: int) -> None:
    """Shard the model as `Trainer.train` does under FSDP (model and optimizer through one `accelerator.prepare`),
    so a complete run's checkpoint can be loaded and evaluated without training a step: accelerate's FSDP2 refuses
    to prepare the model alone (what `evaluate()` would do), and `train()` resumed at the last step trains one more."""
    trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model = trainer.model_wrapped = model


def fit(
    stage: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_set: Dataset,
    eval_sets: dict[str, Dataset],
    cfg: TrainConfig,
    seed: int,
    run_id: str,
    output: Path | None,
    trainer_cls: type[Trainer] = LMTrainer,
    finalize: Callable[[PreTrainedModel], None] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train `model`, save it to `output` (atomically, with the tokenizer) and return the stage metrics.

    `output` None: the caller saves (after its accuracy gate, in its own format).

    `finalize` runs on the trained model before it is saved (pruning makes its masks permanent there).
    A checkpoint at max_steps of this very run means the run is complete: nothing is trained, the model is
    that checkpoint's (bit for bit the model the run saved), and the metrics are the whole run's.
    """
    processes = world_size()
    # auto: measured at the model's width (each rank measures for itself)
    precision = hardware.choose_precision(cfg.precision, kind="training", width=model.config.hidden_size)
    args = training_arguments(cfg, paths.CHECKPOINTS / stage, seed, processes, precision["precision"])
    _ = args.device  # sets up the Trainer's PartialState: under a launcher, the process group (gloo on CPU)
    state = PartialState()
    lock = lock_stage(stage) if state.is_main_process else None  # before anything touches the checkpoints
    try:
        run_id = hashlib.sha256(f"{run_id} processes={processes}".encode()).hexdigest()
        folder, resume_from = checkpoint_dir(stage, run_id, state)
        complete = resume_from is not None and checkpoint_step(resume_from) >= cfg.max_steps
        seconds_before = run_seconds(resume_from) if resume_from else 0.0
        resumed_state = (TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
                         if resume_from else None)
        tokens_before = resumed_state.num_input_tokens_seen if resumed_state else 0
        model.set_attn_implementation(cfg.attn_implementation)
        guard = RunGuard(stage, seconds_before, state.is_main_process)
        live = open_live(stage, resume_from) if state.is_main_process else None
        callbacks = [guard] + ([TrainingStepDVCLiveCallback(live=live)] if live is not None else [])
        trainer = trainer_cls(
            model=model,
            args=args,
            data_collator=collator_for(model, tokenizer, seed),
            train_dataset=train_set,
            eval_dataset=eval_sets,
            processing_class=tokenizer,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
            raise ConfigError(f"launcher: {stage} was launched with an FSDP config, but accelerate enables FSDP on "
                              "GPUs only and would train without sharding here (DDP or one process); on a CPU use "
                              "launcher torchrun --nproc_per_node=N (docs/scale-out.md)")
        # the model's own parameters: not a training aid (finetune's replay head, distill's hidden projection)
        n_params = sum(p.numel() for name, p in model.named_parameters()
                       if not name.startswith(TRAINING_AIDS))
        if complete:
            log.info("%s: %s is the last step of this very run: nothing to train", stage, resume_from)
            with quiet.third_party():
                if trainer.is_fsdp_enabled:  # shard first, as train() does: FSDP2 prepares model and optimizer
                    prepare_fsdp_like_train(trainer, cfg.max_steps)  # together, never the model alone
                trainer._load_from_checkpoint(resume_from, trainer.model_wrapped if trainer.is_fsdp_enabled
                                              else None)  # the Trainer's own resume path, weights only
            trainer.state = resumed_state
            seconds, runtime_this_process = seconds_before, 0.0
        else:
            log.info("%s: %d parameters, %d steps of %d examples (%d per process, %d processes)", stage, n_params,
                     cfg.max_steps, cfg.batch_size * cfg.grad_accum_steps, args.per_device_train_batch_size, processes)
            try:
                with quiet.third_party():  # the Trainer's notes on checkpoint order
                    result = trainer.train(resume_from_checkpoint=resume_from)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{stage}: {exc}; nothing saved to {output}") from None
            # the time the final checkpoint recorded, as a rerun of this complete run will report it
            last = get_last_checkpoint(str(folder))
            recorded = run_seconds(last) if last and checkpoint_step(last) == trainer.state.global_step else None
            seconds = recorded if recorded is not None else guard.seconds()
            runtime_this_process = result.metrics["train_runtime"]
        final = trainer.evaluate()
        if trainer.is_fsdp_enabled and state.is_main_process:
            log.info("%s: FSDP units: %s", stage, fsdp_units(model))
        if finalize is not None:
            finalize(model)
        check_finite(model, f"{stage}: the trained model", error=TrainingDiverged)

        tokens = trainer.state.num_input_tokens_seen
        if seconds is None:  # a checkpoint without the whole run's time: report the part trained here, never more
            seconds, tokens = (runtime_this_process or None), tokens - tokens_before
        train_loss = whole_run_loss(trainer.state)
        # the terms a trainer logs beside the loss (distill: kd_loss, ce_loss, hidden_loss), at the last log
        terms = next((e for e in reversed(trainer.state.log_history) if "loss" in e and "step" in e), {})
        # sorted: a rerun that resumes the complete run reads them from the checkpoint's log in another order,
        # and the model card, a DVC output, must be the same bytes
        terms = {k: terms[k] for k in sorted(terms) if k.endswith("_loss")}
        metrics: dict[str, Any] = {
            "steps": trainer.state.global_step,
            "resumed_from_step": checkpoint_step(resume_from) if resume_from else 0,
            "processes": processes,
            "parameters": n_params,
            "train_loss": round(train_loss, 4) if train_loss is not None else None,
            "train_runtime_s": round(seconds, 2) if seconds else None,
            "train_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "precision": precision,
            **({"train_loss_terms": terms} if terms else {}),
        }
        warning = divergence(stage, trainer.state.log_history)
        metrics["diverged"] = warning is not None  # the log's warning, kept where `dvc exp show` users look
        metrics["warnings"] = [warning] if warning else []
        # the task loss is on one label word: its exponent is no perplexity; nor is MLM + NSP's (pretraining)
        perplexity = None if kind_of_model(model) == "pretraining" else \
            "masked_perplexity" if is_encoder(model.config.model_type) else "perplexity"
        for name in eval_sets:
            loss = final[f"eval_{name}_loss"]
            metrics[f"eval_{name}_loss"] = round(loss, 4)
            if name != "task" and perplexity:
                metrics[f"eval_{name}_{perplexity}"] = round(math.exp(loss), 3) if loss < 700 else math.inf

        if output is not None:
            save_folder(output, stage, model_writer(model, stage), tokenizer=tokenizer,
                        metrics=metrics)  # the card carries these metrics
            state.wait_for_everyone()  # no rank goes on before the model is in place
        if complete and live is not None:
            live.end()  # the Trainer's on_train_end does it after training
        return metrics
    finally:
        if lock is not None:
            release_stage(lock)
