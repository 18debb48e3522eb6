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
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lmforge import paths
from lmforge.artifacts import read_json
from lmforge.config import MixtureConfig
from lmforge.errors import DataError, require
from lmforge.training.losses import IGNORE_INDEX


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


def task_examples(split: str, label_token_ids: list[int], limit: int | None = None) -> Dataset:
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)

    def to_lm(batch: dict) -> dict:
        ids = [p + [label_token_ids[y]] for p, y in zip(batch["prompt_ids"], batch["label"], strict=True)]
        labels = [[IGNORE_INDEX] * (len(i) - 1) + [i[-1]] for i in ids]
        return {"input_ids": ids, "labels": labels}

    return examples.map(to_lm, batched=True, remove_columns=examples.column_names, keep_in_memory=True,
                        desc=f"task/{split}")


def task_prompts(split: str, limit: int | None = None) -> tuple[list[list[int]], list[int]]:
    """The prompts (review + prompt, without the label word) and labels of a task split."""
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)
    return list(examples["prompt_ids"]), list(examples["label"])


def mixture_train_set(mixture: MixtureConfig, num_examples: int, seed: int) -> Dataset:
    """`num_examples` training examples drawn from domain blocks, task examples and general blocks
    with probabilities proportional to the mixture weights; each source is cycled through in a
    shuffled order, so a small source repeats rather than running dry."""
    label_token_ids = task_meta()["label_token_ids"]
    sources = {
        "domain": lambda: lm_examples(paths.LM_DOMAIN, "train"),
        "task": lambda: task_examples("train", label_token_ids),
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
            part = part.map(lambda b: {"labels": b["input_ids"]}, batched=True, keep_in_memory=True, desc=name)
        parts.append(part)
    return concatenate_datasets(parts).shuffle(seed=seed, keep_in_memory=True)


def eval_sets(limit: int, *, with_task: bool) -> dict[str, Dataset]:
    """Validation sets reported separately, so forgetting of the general corpus is visible."""
    sets = {"general": lm_examples(paths.LM_GENERAL, "validation", limit),
            "domain": lm_examples(paths.LM_DOMAIN, "validation", limit)}
    if with_task:
        sets["task"] = task_examples("validation", task_meta()["label_token_ids"], limit)
    return sets


@dataclass
class PadCollator:
    """Right-pads a batch of variable-length examples; padding is masked out of attention and loss.

    An example without `labels` is an LM block: its labels are its inputs."""

    pad_token_id: int

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
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
