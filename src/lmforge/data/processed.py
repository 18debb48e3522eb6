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
from lmforge.data import transfer
from lmforge.data.examples import IGNORE_INDEX, encode_prompts
from lmforge.errors import DataError, require


def load_tokenizer(path: Path = paths.TOKENIZER) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(require(path))


def task_meta() -> dict:
    return read_json(require(paths.TASK_META))


def own_tokenizer(tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase | None:
    """`tokenizer` if it differs from data/processed's (a student of another family reads text its own way),
    None if it is the same (the stored token ids serve; so every model of one family reads bit-identical
    inputs)."""
    if tokenizer is None:
        return None
    processed = load_tokenizer()
    same = type(tokenizer) is type(processed) and tokenizer.get_vocab() == processed.get_vocab()
    return None if same else tokenizer


def encode_for(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Review + prompt as token ids of `tokenizer`, as preprocess encodes them for the teacher (the same prompt
    and block size, lmforge.data.examples.encode_prompts)."""
    meta = task_meta()
    return encode_prompts(texts, tokenizer, meta["prompt"], meta["block_size"])[0]


def retokenize_blocks(blocks: list[list[int]], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """LM blocks of data/processed in `tokenizer`'s ids: decoded, re-encoded as one stream and cut into blocks
    of the same length (with [CLS] ... [SEP] around each where the tokenizer has them). What a model with its own
    vocabulary is calibrated and checked on."""
    length = len(blocks[0]) if blocks else 0
    text = load_tokenizer().batch_decode(blocks, skip_special_tokens=True)
    stream = [i for ids in tokenizer(text, add_special_tokens=False)["input_ids"] for i in ids]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    room = length - 2 if cls is not None and sep is not None else length
    out = []
    for start in range(0, len(stream) - room + 1, room):
        chunk = stream[start:start + room]
        out.append([cls, *chunk, sep] if room != length else chunk)
    return out[: len(blocks)]


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


def task_examples(split: str, label_token_ids: list[int], limit: int | None = None, head: str = "lm",
                  tokenizer: PreTrainedTokenizerBase | None = None) -> Dataset:
    """Task examples for training: with head=lm the prompt then its label word, the label word the only
    target (a completion-only loss); with head=classifier the prompt and its `class_label`. `tokenizer`: the
    prompts in its ids (a model with its own vocabulary; `own_tokenizer`)."""
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)
    if tokenizer is not None:
        examples = examples.remove_columns("prompt_ids").add_column("prompt_ids",
                                                                    encode_for(tokenizer, examples["text"]))

    def to_lm(batch: dict) -> dict:
        ids = [p + [label_token_ids[y]] for p, y in zip(batch["prompt_ids"], batch["label"], strict=True)]
        labels = [[IGNORE_INDEX] * (len(i) - 1) + [i[-1]] for i in ids]
        return {"input_ids": ids, "labels": labels}

    def to_classifier(batch: dict) -> dict:
        return {"input_ids": batch["prompt_ids"], "labels": [[IGNORE_INDEX] * len(p) for p in batch["prompt_ids"]],
                "class_label": batch["label"]}

    return examples.map(to_lm if head == "lm" else to_classifier, batched=True,
                        remove_columns=examples.column_names, keep_in_memory=True, desc=f"task/{split}")


def task_prompts(split: str, limit: int | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
                 ) -> tuple[list[list[int]], list[int]]:
    """The prompts (review + prompt, without the label word) and labels of a task split; in `tokenizer`'s ids
    when one is given (`own_tokenizer`), else as preprocess stored them."""
    examples = _load(paths.TASK, split)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))), keep_in_memory=True)
    prompts = encode_for(tokenizer, examples["text"]) if tokenizer is not None else list(examples["prompt_ids"])
    return prompts, list(examples["label"])


@dataclass
class ValidationData:
    """What a compression stage checks its model and the teacher on (lmforge.evaluation.metrics.measure)."""

    general: list[list[int]]
    domain: list[list[int]]
    prompts: list[list[int]]
    labels: list[int]
    label_token_ids: list[int]


def validation_data(limit: int, tokenizer: PreTrainedTokenizerBase | None = None) -> ValidationData:
    """At most `limit` validation blocks of each corpus and `limit` validation task examples; in `tokenizer`'s
    ids when one is given (`own_tokenizer`)."""
    prompts, labels = task_prompts("validation", limit, tokenizer)
    general = list(lm_examples(paths.LM_GENERAL, "validation", limit)["input_ids"])
    domain = list(lm_examples(paths.LM_DOMAIN, "validation", limit)["input_ids"])
    if tokenizer is not None:
        general, domain = retokenize_blocks(general, tokenizer), retokenize_blocks(domain, tokenizer)
    return ValidationData(general=general, domain=domain, prompts=prompts, labels=labels,
                          label_token_ids=task_meta()["label_token_ids"])


def calibration_blocks(samples: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> torch.Tensor:
    """`samples` LM blocks of the train split, half general and half domain text, in a seeded order; in
    `tokenizer`'s ids when one is given (`own_tokenizer`)."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for path, count in ((paths.LM_GENERAL, samples - samples // 2), (paths.LM_DOMAIN, samples // 2)):
        blocks = lm_examples(path, "train")
        # a model with its own vocabulary: twice the blocks re-encoded, so that `count` fill up again
        order = torch.randperm(len(blocks), generator=generator)[:count * (2 if tokenizer else 1)].tolist()
        chosen = [blocks[i]["input_ids"] for i in order]
        parts += retokenize_blocks(chosen, tokenizer)[:count] if tokenizer is not None else chosen
    return torch.tensor(parts, dtype=torch.long)


def transfer_train_set(tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The transfer set (stage transfer) as training examples of a student with `tokenizer`: review + prompt in
    its ids (no token targets), the true label where there is one (`class_label`, -100 elsewhere) and the
    teacher's cached outputs (`teacher_logits`)."""
    examples = transfer.load()
    labels = [label if label >= 0 else IGNORE_INDEX for label in examples["label"]]
    ids = encode_for(tokenizer, examples["text"])
    return Dataset.from_dict({"input_ids": ids, "labels": [[IGNORE_INDEX] * len(x) for x in ids],
                              "class_label": labels, "teacher_logits": examples["teacher_logits"]})


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


def eval_sets(limit: int, *, with_task: bool, head: str = "lm", with_lm: bool = True,
              tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Dataset]:
    """Validation sets reported separately, so forgetting of the general corpus is visible. `with_lm`
    False: the task only (a classifier without an LM head has no loss on text). `tokenizer`: the task in its
    ids (`own_tokenizer`; a model with its own vocabulary is evaluated on the task only)."""
    with_lm = with_lm and tokenizer is None
    sets = {"general": lm_examples(paths.LM_GENERAL, "validation", limit),
            "domain": lm_examples(paths.LM_DOMAIN, "validation", limit)} if with_lm else {}
    if with_task:
        sets["task"] = task_examples("validation", task_meta()["label_token_ids"], limit, head=head,
                                     tokenizer=tokenizer)
    return sets
