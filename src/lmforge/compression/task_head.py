"""The deployed task model: the transformer body, then only the label-word rows of the LM head at the last
real position of each prompt. The full LM head (vocabulary x width) is most of a small model's inference
FLOPs; the task needs two of its rows.

    task = TaskModel(lm, label_token_ids)                 # torch: any causal LM of the chain (fp32, bf16, int8)
    scores = task(input_ids, attention_mask)               # (batch, labels): argmax = the predicted label

    # ONNX (written by the quantize stage as models/quantized/task.onnx when quantize.task_model is true):
    import onnxruntime, numpy as np
    session = onnxruntime.InferenceSession("models/quantized/task.onnx")
    scores, = session.run(None, {"input_ids": ids, "attention_mask": mask})   # int64 arrays (batch, seq)

Prompts are right-padded (attention_mask 1 then 0); the label order is task_meta.json's label_words.
Its argmax equals the full model's prediction (argmax of the log-softmax restricted to the label tokens).

Only a causal LM (task.head=lm) has a task model: a classifier's own logits are already (batch, labels),
and a BERT MLM does not predict the word after the prompt. `applies` says which; TaskModel refuses the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.modeling.family import kind_of_model

TASK_FILE = "task.onnx"
OUTPUT = "label_logits"


def applies(model) -> bool:
    """Whether `model` (or its config) has a task-only model: a causal LM; not a classifier nor an encoder."""
    return kind_of_model(model) == "causal"


def _head_rows(lm: nn.Module, label_token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = lm.get_output_embeddings()
    weight = head.weight() if callable(head.weight) else head.weight  # dynamic int8: a packed weight
    if weight.is_quantized:
        weight = weight.dequantize()
    bias = head.bias() if callable(getattr(head, "bias", None)) else getattr(head, "bias", None)
    ids = torch.tensor(list(label_token_ids), dtype=torch.long)
    return weight.detach()[ids].clone(), None if bias is None else bias.detach()[ids].clone()


class TaskModel(nn.Module):
    """(input_ids, attention_mask) -> label logits at the last real position, shape (batch, labels)."""

    def __init__(self, lm: nn.Module, label_token_ids: Sequence[int]) -> None:
        super().__init__()
        if not applies(lm):
            lm_kind = kind_of_model(lm)
            raise ConfigError(f"quantize.task_model: a task-only model is built from a causal LM's head, and this "
                              f"model is a {lm_kind} model ({type(lm).__name__})"
                              + ("; its logits are already the label scores (batch, labels)" if lm_kind == "classifier"
                                 else "") + "; set quantize.task_model to false")
        self.body = lm.base_model  # GPT2Model / LlamaModel: everything but the LM head
        rows, bias = _head_rows(lm, label_token_ids)
        self.rows = nn.Parameter(rows, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token of each row
        state = hidden[torch.arange(hidden.size(0)), last]
        scores = state @ self.rows.to(state.dtype).t()
        return scores if self.bias is None else scores + self.bias.to(scores.dtype)


@torch.inference_mode()
def full_model_predictions(lm, prompts: torch.Tensor, mask: torch.Tensor,
                           label_token_ids: Sequence[int]) -> torch.Tensor:
    """What the full LM predicts (as in lmforge.evaluation.metrics.task_accuracy): label index per prompt."""
    logits = lm(input_ids=prompts, attention_mask=mask).logits.float()
    if logits.dim() == 2:  # a classifier: (batch, labels) already, in the label order
        return logits.argmax(dim=-1)
    last = logits[torch.arange(len(prompts)), mask.sum(dim=1) - 1]
    return last.log_softmax(dim=-1)[:, list(label_token_ids)].argmax(dim=-1)
