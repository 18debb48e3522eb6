"""The training objectives of every kind of model, behind one `training_loss(model, batch)`.

    causal       clm: next-token cross-entropy (labels = inputs; a task example's only target is its label word)
    masked       mlm: 15% of an LM block's tokens are chosen, 80% of them replaced by [MASK], 10% by a random
                 token, 10% left as they are (BERT; transformers' DataCollatorForLanguageModeling does it), and
                 the model predicts the chosen ones
    pretraining  mlm + nsp: sentence pairs [CLS] A [SEP] B [SEP], B the true continuation of A half of the time
    classifier   task.head=classifier: cross-entropy of the label on task examples; the mixture's LM blocks
                 (domain text, general replay) train the body through the LM head of the model it came from,
                 held as `replay_head` while finetune runs and removed before the model is saved

Every loss is averaged per example first (the token losses live in lmforge.training.losses), so the
mixture weights are each source's share of the gradient whatever the objective.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.examples import IGNORE_INDEX, MLM_PROBABILITY
from lmforge.modeling.family import is_encoder, kind_of_model
from lmforge.training.losses import (
    lm_loss,
    masked_lm_loss,
    masked_positions_nll,
    token_nll,
)


class TokenMasker:
    """MLM masking of whole rows (BERT's 15% with 80/10/10 replacement), special and padding tokens excluded."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, probability: float = MLM_PROBABILITY,
                 seed: int | None = None) -> None:
        if tokenizer.mask_token is None:
            raise ValueError(f"masked language modelling needs a tokenizer with a mask token "
                             f"({type(tokenizer).__name__} has none)")
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=probability, seed=seed)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels: the original token at chosen positions, -100 elsewhere)."""
        special = torch.isin(input_ids, self.special) | (attention_mask == 0)
        return self.collator.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def class_nll(logits: torch.Tensor, class_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy of the label (rows labelled -100 have none)."""
    nll = F.cross_entropy(logits.float(), class_labels.clamp(min=0), reduction="none")
    has = class_labels != IGNORE_INDEX
    return nll * has, has


class BodyOutput:
    """Keeps the last hidden state of a model's body (`model.base_model`) from its last forward."""

    def __init__(self, model: nn.Module) -> None:
        self.hidden: torch.Tensor | None = None
        self.handle = model.base_model.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        self.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state


def training_loss(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """(loss, outputs) of one batch, by the kind of `model` (module docstring)."""
    kind = kind_of_model(model)
    ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
    if kind == "causal":
        outputs = model(input_ids=ids, attention_mask=mask)
        return lm_loss(outputs.logits, labels), outputs
    if kind == "masked":
        outputs = model(input_ids=ids, attention_mask=mask)
        return masked_lm_loss(outputs.logits, labels), outputs
    if kind == "pretraining":  # BERT's sum of the two
        outputs = model(input_ids=ids, attention_mask=mask, token_type_ids=inputs.get("token_type_ids"))
        loss = masked_lm_loss(outputs.prediction_logits, labels)
        if "next_sentence_label" in inputs:
            loss = loss + F.cross_entropy(outputs.seq_relationship_logits.float(), inputs["next_sentence_label"])
        return loss, outputs
    # classifier: the label on task rows; LM rows through the replay head, when one is attached
    head = getattr(model, "replay_head", None)
    body = BodyOutput(model) if head is not None else None
    try:
        outputs = model(input_ids=ids, attention_mask=mask)
    finally:
        if body is not None:
            body.handle.remove()
    class_labels = inputs.get("class_labels", torch.full_like(ids[:, 0], IGNORE_INDEX))
    row_loss, has = class_nll(outputs.logits, class_labels)
    if head is not None and (labels != IGNORE_INDEX).any():
        if is_encoder(model.config.model_type):
            lm_rows, lm_has = masked_positions_nll(head, body.hidden, labels)
        else:
            lm_rows, lm_has = token_nll(head(body.hidden), labels, causal=True)
        row_loss, has = torch.where(lm_has, lm_rows, row_loss), has | lm_has
    return row_loss[has].mean() if has.any() else row_loss.sum() * 0.0, outputs


# --------------------------------------------------------------------------------------------------
# The classifier head
# --------------------------------------------------------------------------------------------------


def to_classifier(lm: PreTrainedModel, label_words: list[str], pad_token_id: int, seed: int) -> PreTrainedModel:
    """A sequence classifier of `lm`'s family: its body copied, the head (and BERT's pooler, when `lm` has
    none) initialised from `seed`. GPT-2 and Llama classify from the last token that is not padding
    (`pad_token_id`), BERT from [CLS] through its pooler."""
    from transformers import AutoModelForSequenceClassification, set_seed

    config = copy.deepcopy(lm.config)
    config.architectures = None
    config.num_labels = len(label_words)
    config.id2label = dict(enumerate(label_words))
    config.label2id = {word: i for i, word in enumerate(label_words)}
    config.pad_token_id = pad_token_id
    config.problem_type = "single_label_classification"
    set_seed(seed)
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    missing, unexpected = classifier.base_model.load_state_dict(lm.base_model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise ValueError(f"the classifier's body does not match {type(lm).__name__}'s: missing {missing}, "
                         f"unexpected {unexpected}")
    return classifier


def attach_replay_head(classifier: PreTrainedModel, lm: PreTrainedModel) -> None:
    """A copy of `lm`'s LM head (BERT, MPNet: its MLM prediction head) on `classifier`'s body, as
    `classifier.replay_head`. A copy, not tied to the embeddings: it is a training aid, discarded with
    `detach_replay_head` before the classifier is saved, and a plain module checkpoints as it is."""
    if hasattr(lm, "cls"):  # BertForMaskedLM: cls.predictions (transform + decoder)
        head = copy.deepcopy(lm.cls.predictions)
    elif is_encoder(lm.config.model_type):  # MPNetForMaskedLM: lm_head (dense, layer_norm, decoder)
        head = copy.deepcopy(lm.lm_head)
    else:
        head = copy.deepcopy(lm.get_output_embeddings())
    if getattr(head, "bias", None) is getattr(getattr(head, "decoder", None), "bias", False):
        del head.bias  # BERT's (and MPNet's) alias of decoder.bias: a checkpoint may not hold one tensor twice
    classifier.replay_head = head


def detach_replay_head(model: PreTrainedModel) -> None:
    if hasattr(model, "replay_head"):
        del model.replay_head
