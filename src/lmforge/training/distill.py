"""Teacher -> student knowledge distillation as a Trainer (the recipe is stages/distill.py) whose loss is

    alpha_kd * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha_ce * CE(student, labels)

      + alpha_hidden * hidden-state loss (layer-wise KD: student block i vs its teacher block)

With task.head=classifier the teacher and student output label logits: KD is on those, on every example
of the mixture (the teacher labels the unlabelled text too), CE on the task examples' labels.

With distill.data=transfer the teacher is not run at all: each example of the transfer set carries the teacher's
outputs, computed once by the transfer stage (`teacher_logits`: label logits, or an LM's label-word log-probs),
and the student's own label logits (a classifier's, or its LM head's logits of the label words after the prompt)
are matched to them. The student may then be of any family and read the text with its own tokenizer.

The KL term covers every real next-token position, so the student learns the teacher's whole
distribution, not only the positions that carry a label (losses in lmforge.training.losses). Both
terms are computed a chunk of positions at a time from the teacher's last hidden state, so a real
vocabulary (SmolLM2: 49,152 tokens) costs one copy of the student's logits, not half a dozen. The
hidden-state term matches student block i to the teacher block it was initialised from (the same
layer map), through a learned projection when the student is narrower.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from lmforge.config import KDConfig
from lmforge.errors import LmforgeError
from lmforge.modeling.arch import blocks_of
from lmforge.modeling.build import teacher_layer_map
from lmforge.modeling.family import is_classifier
from lmforge.training.losses import class_distillation_loss, distillation_loss, hidden_state_loss
from lmforge.training.runner import LMTrainer


class BlockOutputs:
    """Forward hooks that keep the outputs of chosen transformer blocks (before the final norm) while
    `active`, for the hidden-state term; evaluation runs the student with them off."""

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        self.active = False
        self.outputs: list[torch.Tensor] = []
        stack = blocks_of(model)
        for i in layers:
            stack[i].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.active:
            self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        outputs, self.outputs = self.outputs, []
        return outputs


def attach_hidden_projection(student: PreTrainedModel, teacher: PreTrainedModel) -> bool:
    """A narrower student's block outputs are compared with the teacher's through one learned linear map
    per layer (TinyBERT). It is a submodule of the student while it trains, so the Trainer optimises and
    checkpoints it with the student; `detach_hidden_projection` removes it before the student is saved."""
    width, teacher_width = student.config.hidden_size, teacher.config.hidden_size
    if width == teacher_width:
        return False
    student.hidden_projection = nn.ModuleList(nn.Linear(width, teacher_width, bias=False)
                                              for _ in blocks_of(student))
    return True


def detach_hidden_projection(student: PreTrainedModel) -> None:
    if hasattr(student, "hidden_projection"):
        del student.hidden_projection


class DistillationTrainer(LMTrainer):
    """A Trainer whose loss mixes KD from a frozen teacher with the student's own CE (and, with
    `alpha_hidden` > 0, the hidden-state term); logs each term."""

    def __init__(self, *args: Any, teacher: PreTrainedModel | None, kd: KDConfig, alpha_hidden: float = 0.0,
                 hidden_loss: str = "mse", layer_map: list[int] | None = None,
                 label_token_ids: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # teacher None: the examples carry its cached outputs (distill.data=transfer)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False) if teacher is not None else None
        self.kd = kd
        self.classifier = is_classifier(self.teacher if teacher is not None else self.model)
        self.label_token_ids = label_token_ids
        if teacher is not None and not self.classifier:
            check_logits_from_hidden(self.teacher)
        if teacher is None and alpha_hidden > 0:
            raise LmforgeError("distillation: hidden-state KD needs the teacher's activations; the cached outputs "
                               "have none (distill.data=mixture runs the teacher online)")
        self._sums = {"kd_loss": 0.0, "ce_loss": 0.0}
        self._count = 0
        self.alpha_hidden, self.hidden_loss = alpha_hidden, hidden_loss
        if alpha_hidden > 0:
            n_student, n_teacher = len(blocks_of(self.model)), len(blocks_of(self.teacher))
            self.layer_map = layer_map or teacher_layer_map(n_teacher, n_student)
            self.student_blocks = BlockOutputs(self.model, list(range(n_student)))
            self.teacher_blocks = BlockOutputs(self.teacher, self.layer_map)
            self._sums["hidden_loss"] = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation reports the student's own CE, comparable with every other model
            return super().compute_loss(model, inputs, return_outputs)
        hidden = self.alpha_hidden > 0
        if hidden:
            self.student_blocks.active = self.teacher_blocks.active = True
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        if "teacher_logits" in inputs:  # the transfer set: the teacher's outputs are cached, the teacher never runs
            loss, kd, ce = class_distillation_loss(label_logits(outputs.logits, inputs["attention_mask"],
                                                                self.label_token_ids),
                                                   inputs["teacher_logits"], inputs["class_labels"],
                                                   self.kd.temperature, self.kd.alpha_kd, self.kd.alpha_ce)
        elif self.classifier:  # label logits: the teacher's whole output is small
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=inputs["input_ids"],
                                              attention_mask=inputs["attention_mask"]).logits
            loss, kd, ce = class_distillation_loss(outputs.logits, teacher_logits, inputs["class_labels"],
                                                   self.kd.temperature, self.kd.alpha_kd, self.kd.alpha_ce)
        else:
            with torch.no_grad():  # the teacher's last hidden state; its logits are made chunk by chunk
                teacher_hidden = self.teacher.base_model(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs["attention_mask"]).last_hidden_state
            loss, kd, ce = distillation_loss(outputs.logits, teacher_hidden, self.teacher.get_output_embeddings(),
                                             inputs["labels"], inputs["attention_mask"], self.kd.temperature,
                                             self.kd.alpha_kd, self.kd.alpha_ce)
        if hidden:
            self.student_blocks.active = self.teacher_blocks.active = False
            term = hidden_state_loss(self.student_blocks.take(), self.teacher_blocks.take(),
                                     inputs["attention_mask"], self.hidden_loss,
                                     getattr(self.model, "hidden_projection", None))
            loss = loss + self.alpha_hidden * term
            self._sums["hidden_loss"] += term.item()
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


def label_logits(logits: torch.Tensor, attention_mask: torch.Tensor, label_token_ids: list[int] | None,
                 ) -> torch.Tensor:
    """A student's logits over the labels: a classifier's own, or an LM's logits of the label words at the last
    real position of each right-padded prompt (as lmforge.evaluation.metrics.label_log_probs reads them; a
    softmax over the labels is the same for logits and log-probabilities)."""
    if logits.dim() == 2:
        return logits
    if label_token_ids is None:
        raise LmforgeError("distillation: an LM student learns cached label outputs through its label words; "
                           "the trainer needs label_token_ids")
    last = attention_mask.sum(dim=1) - 1
    return logits[torch.arange(len(logits), device=logits.device), last][:, label_token_ids]


@torch.no_grad()
def check_logits_from_hidden(model: PreTrainedModel) -> None:
    """The chunked KD loss makes the teacher's logits as output_embeddings(base_model(x)): true of GPT-2 and
    Llama-family models, not of a model that scales or caps its logits after the head; refuse those."""
    ids = torch.arange(4, device=model.device).unsqueeze(0) % model.config.vocab_size
    mask = torch.ones_like(ids)  # unpadded: said, so that transformers does not warn that it may be padded
    logits = model(input_ids=ids, attention_mask=mask).logits
    rebuilt = model.get_output_embeddings()(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state)
    # 1% of the logits' scale: a compiled or bf16 forward differs by ~0.3%; a scaled or capped head far more
    tolerance = 1e-2 * max(1.0, logits.float().abs().max().item())
    if (logits.float() - rebuilt.float()).abs().max().item() > tolerance:
        raise LmforgeError(f"distillation: the teacher ({type(model).__name__}) does not compute its logits as "
                           "output_embeddings(last hidden state); the chunked KD loss cannot be used with it")
