"""Batches for the Trainer: right padding, and MLM masking of an encoder's LM blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.examples import IGNORE_INDEX
from lmforge.modeling.family import is_encoder
from lmforge.training.objectives import TokenMasker


@dataclass
class PadCollator:
    """Right-pads a batch of variable-length examples; padding is masked out of attention and loss.

    An example without `labels` is an LM block: its labels are its inputs. With a `masker` (encoders), every
    row with token targets is masked for MLM (its targets become the chosen tokens). Optional columns pass
    through as tensors: `class_label` (as `class_labels`; -100 on LM blocks), `token_type_ids` and
    `next_sentence_label` (NSP pairs), `teacher_logits` (the transfer set's cached teacher outputs)."""

    pad_token_id: int
    masker: TokenMasker | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f.get("labels", f["input_ids"]))
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if self.masker is not None:
            rows = (labels != IGNORE_INDEX).any(-1)
            if rows.any():
                masked, targets = self.masker(input_ids[rows], attention_mask[rows])
                input_ids[rows], labels[rows] = masked, targets
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
            for row, f in enumerate(features):
                batch["token_type_ids"][row, : len(f["token_type_ids"])] = torch.tensor(f["token_type_ids"])
        for key, name in (("class_label", "class_labels"), ("next_sentence_label", "next_sentence_label")):
            if key in features[0]:
                batch[name] = torch.tensor([f[key] for f in features], dtype=torch.long)
        if "teacher_logits" in features[0]:  # the transfer set: the teacher's cached outputs, one row per example
            batch["teacher_logits"] = torch.tensor([f["teacher_logits"] for f in features], dtype=torch.float32)
        return batch


def collator_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> PadCollator:
    """Masking for an encoder's LM blocks, plain padding for a causal model's."""
    masker = TokenMasker(tokenizer, seed=seed) if is_encoder(model.config.model_type) else None
    return PadCollator(tokenizer.pad_token_id, masker)
