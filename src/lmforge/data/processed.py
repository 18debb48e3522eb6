"""The one reader of data/processed: tokenizer, task meta, LM blocks, task examples and prompts, the multi-task
mixture, the validation data of the gates.

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
from lmforge.data.examples import IGNORE_INDEX
from lmforge.errors import DataError, require


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


def calibration_blocks(samples: int, seed: int) -> torch.Tensor:
    """`samples` LM blocks of the train split, half general and half domain text, in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for path, count in ((paths.LM_GENERAL, samples - samples // 2), (paths.LM_DOMAIN, samples // 2)):
        blocks = lm_examples(path, "train")
        order = torch.randperm(len(blocks), generator=generator)[:count].tolist()
        parts += [blocks[i]["input_ids"] for i in order]
    return torch.tensor(parts, dtype=torch.long)


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
