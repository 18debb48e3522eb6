"""Teacher -> student knowledge distillation as a Trainer whose loss is

    alpha_kd * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha_ce * CE(student, labels)

The KL term covers every real next-token position, so the student learns the teacher's whole
distribution, not only the positions that carry a label (losses in lmforge.training.losses). Both
terms are computed a chunk of positions at a time from the teacher's last hidden state, so a real
vocabulary (SmolLM2: 49,152 tokens) costs one copy of the student's logits, not half a dozen.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmforge import paths
from lmforge.errors import LmforgeError
from lmforge.modeling.build import build_student, non_embedding_parameters, student_shape
from lmforge.training import data
from lmforge.training.losses import distillation_loss
from lmforge.training.runner import LMTrainer, fingerprint, fit

log = logging.getLogger(__name__)


class DistillationTrainer(LMTrainer):
    """A Trainer whose loss mixes KD from a frozen teacher with the student's own CE; logs both terms."""

    def __init__(self, *args: Any, teacher: PreTrainedModel, temperature: float, alpha_kd: float,
                 alpha_ce: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        check_logits_from_hidden(self.teacher)
        self.temperature, self.alpha_kd, self.alpha_ce = temperature, alpha_kd, alpha_ce
        self._sums = {"kd_loss": 0.0, "ce_loss": 0.0}
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation reports the student's own CE, comparable with every other model
            return super().compute_loss(model, inputs, return_outputs)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        with torch.no_grad():  # the teacher's last hidden state; its logits are made chunk by chunk
            teacher_hidden = self.teacher.base_model(input_ids=inputs["input_ids"],
                                                     attention_mask=inputs["attention_mask"]).last_hidden_state
        loss, kd, ce = distillation_loss(outputs.logits, teacher_hidden, self.teacher.get_output_embeddings(),
                                         inputs["labels"], inputs["attention_mask"], self.temperature,
                                         self.alpha_kd, self.alpha_ce)
        self._sums["kd_loss"] += kd.item()
        self._sums["ce_loss"] += ce.item()
        self._count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._count and "loss" in logs:  # a training log: add the mean of each term since the last one
            logs.update({k: round(v / self._count, 4) for k, v in self._sums.items()})
            self._sums = dict.fromkeys(self._sums, 0.0)
            self._count = 0
        super().log(logs, start_time)


@torch.no_grad()
def check_logits_from_hidden(model: PreTrainedModel) -> None:
    """The chunked KD loss makes the teacher's logits as output_embeddings(base_model(x)): true of GPT-2 and
    Llama-family models, not of a model that scales or caps its logits after the head; refuse those."""
    ids = torch.arange(4, device=model.device).unsqueeze(0) % model.config.vocab_size
    logits = model(input_ids=ids).logits
    rebuilt = model.get_output_embeddings()(model.base_model(input_ids=ids).last_hidden_state)
    if not torch.allclose(logits.float(), rebuilt.float(), rtol=1e-4, atol=1e-4):
        raise LmforgeError(f"distillation: the teacher ({type(model).__name__}) does not compute its logits as "
                           "output_embeddings(last hidden state); the chunked KD loss cannot be used with it")


def distill(params: dict[str, Any]) -> dict[str, Any]:
    cfg = params["distill"]
    student_shape(params["model"], params["student"])  # a student larger than its teacher fails here, first
    source = data.require(paths.model_dir("teacher"), "finetune")
    tokenizer = data.load_tokenizer()
    teacher = AutoModelForCausalLM.from_pretrained(source)
    student = build_student(teacher, params["model"], params["student"], seed=params["seed"])
    ratio = non_embedding_parameters(student) / non_embedding_parameters(teacher)
    log.info("student: %d layers, %d wide, %.1f%% of the teacher's non-embedding parameters",
             student.config.num_hidden_layers, student.config.hidden_size, 100 * ratio)

    examples = cfg.max_steps * cfg.batch_size * cfg.grad_accum_steps
    train_set = data.mixture_train_set(cfg.mixture, examples, params["seed"])
    eval_sets = data.eval_sets(cfg.eval_max_examples, with_task=True)
    run_id = fingerprint({"seed": params["seed"], "student": params["student"], "distill": cfg},
                         [source, paths.PROCESSED])
    metrics = fit("distill", student, tokenizer, train_set, eval_sets, cfg, params["seed"], run_id,
                  paths.model_dir("student"), trainer_cls=DistillationTrainer, teacher=teacher,
                  temperature=cfg.temperature, alpha_kd=cfg.alpha_kd, alpha_ce=cfg.alpha_ce)
    metrics["non_embedding_parameter_ratio"] = round(ratio, 4)
    return metrics
