"""Training examples from data/processed: LM blocks, task examples, and the multi-task mixture.

An example is `{"input_ids"}` (an LM block: every token is a target) or `{"input_ids", "labels"}`
(a task example: only the label word is a target, a completion-only loss).

data/processed is a DVC output: nothing here may write into it, so every derived dataset is kept in
memory (`datasets` would otherwise put cache files next to the Arrow files it reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lmforge import paths
from lmforge.artifacts import read_json
from lmforge.config import MixtureConfig
from lmforge.errors import DataError, require
from lmforge.modeling.family import is_encoder
from lmforge.training.losses import IGNORE_INDEX
from lmforge.training.objectives import TokenMasker


def load_tokenizer(path: Path = paths.TOKENIZER) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(require(path))


def task_meta() -> dict:
    return read_json(require(paths.TASK_META))


def _load(path: Path, split: str) -> Dataset:
    dataset = load_from_disk(str(require(path)))
    if split not in dataset:
        raise DataError(f"{path}: no '{split}' split (found {', '.join(dataset)})")
    return dataset[split]


def lm_examples(path: Path, split: str, limit: int | None = None) -> Dataset:
    blocks = _load(path, split).select_columns(["input_ids"])
    if limit is not None:
        blocks = blocks.select(range(min(limit, len(blocks))), keep_in_memory=True)
    return blocks


def task_examples(split: str, label_token_ids: list[int], limit: int | None = None, head: str = "lm") -> Dataset:
    """Task examples for training: with head=lm the prompt then its label word, the label word the only
    target (a completion-only loss); with head=classifier the prompt and its `class_label`."""
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)

    def to_lm(batch: dict) -> dict:
        ids = [p + [label_token_ids[y]] for p, y in zip(batch["prompt_ids"], batch["label"], strict=True)]
        labels = [[IGNORE_INDEX] * (len(i) - 1) + [i[-1]] for i in ids]
        return {"input_ids": ids, "labels": labels}

    def to_classifier(batch: dict) -> dict:
        return {"input_ids": batch["prompt_ids"], "labels": [[IGNORE_INDEX] * len(p) for p in batch["prompt_ids"]],
                "class_label": batch["label"]}

    return examples.map(to_lm if head == "lm" else to_classifier, batched=True,
                        remove_columns=examples.column_names, keep_in_memory=True, desc=f"task/{split}")


def task_prompts(split: str, limit: int | None = None) -> tuple[list[list[int]], list[int]]:
    """The prompts (review + prompt, without the label word) and labels of a task split."""
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)
    return list(examples["prompt_ids"]), list(examples["label"])


@dataclass
class ValidationData:
    """What a compression stage checks its model and the teacher on (lmforge.evaluation.metrics.measure)."""

    general: list[list[int]]
    domain: list[list[int]]
    prompts: list[list[int]]
    labels: list[int]
    label_token_ids: list[int]


def validation_data(limit: int) -> ValidationData:
    """At most `limit` validation blocks of each corpus and `limit` validation task examples."""
    prompts, labels = task_prompts("validation", limit)
    return ValidationData(
        general=list(lm_examples(paths.LM_GENERAL, "validation", limit)["input_ids"]),
        domain=list(lm_examples(paths.LM_DOMAIN, "validation", limit)["input_ids"]),
        prompts=prompts, labels=labels, label_token_ids=task_meta()["label_token_ids"])


def mixture_train_set(mixture: MixtureConfig, num_examples: int, seed: int, head: str = "lm") -> Dataset:
    """`num_examples` training examples drawn from domain blocks, task examples and general blocks
    with probabilities proportional to the mixture weights; each source is cycled through in a
    shuffled order, so a small source repeats rather than running dry. With head=classifier the LM
    blocks carry class_label -100 (no label: they train the body, or are distilled from the teacher)."""
    label_token_ids = task_meta()["label_token_ids"]
    sources = {
        "domain": lambda: lm_examples(paths.LM_DOMAIN, "train"),
        "task": lambda: task_examples("train", label_token_ids, head=head),
        "general": lambda: lm_examples(paths.LM_GENERAL, "train"),
    }
    weights = {name: getattr(mixture, name) for name in sources}
    total = sum(weights.values())
    if total <= 0:
        raise DataError("mixture weights (domain, task, general) are all zero: nothing to train on")
    rng = np.random.default_rng(seed)
    choice = rng.choice(len(sources), size=num_examples, p=[w / total for w in weights.values()])
    parts = []
    for index, name in enumerate(sources):
        count = int((choice == index).sum())
        if count == 0:
            continue
        dataset = sources[name]()
        order = np.concatenate([rng.permutation(len(dataset)) for _ in range(-(-count // len(dataset)))])
        part = dataset.select(order[:count], keep_in_memory=True)
        if "labels" not in part.column_names:  # to be concatenated with task examples, blocks need labels too
            extra = (lambda b: {"labels": b["input_ids"]}) if head == "lm" else \
                (lambda b: {"labels": b["input_ids"], "class_label": [IGNORE_INDEX] * len(b["input_ids"])})
            part = part.map(extra, batched=True, keep_in_memory=True, desc=name)
        parts.append(part)
    return concatenate_datasets(parts).shuffle(seed=seed, keep_in_memory=True)


def eval_sets(limit: int, *, with_task: bool, head: str = "lm", with_lm: bool = True) -> dict[str, Dataset]:
    """Validation sets reported separately, so forgetting of the general corpus is visible. `with_lm`
    False: the task only (a classifier without an LM head has no loss on text)."""
    sets = {"general": lm_examples(paths.LM_GENERAL, "validation", limit),
            "domain": lm_examples(paths.LM_DOMAIN, "validation", limit)} if with_lm else {}
    if with_task:
        sets["task"] = task_examples("validation", task_meta()["label_token_ids"], limit, head=head)
    return sets


@dataclass
class PadCollator:
    """Right-pads a batch of variable-length examples; padding is masked out of attention and loss.

    An example without `labels` is an LM block: its labels are its inputs. With a `masker` (encoders), every
    row with token targets is masked for MLM (its targets become the chosen tokens). Optional columns pass
    through as tensors: `class_label` (as `class_labels`; -100 on LM blocks), `token_type_ids` and
    `next_sentence_label` (NSP pairs)."""

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
        return batch


def collator_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> PadCollator:
    """Masking for an encoder's LM blocks, plain padding for a causal model's."""
    masker = TokenMasker(tokenizer, seed=seed) if is_encoder(model.config.model_type) else None
    return PadCollator(tokenizer.pad_token_id, masker)
