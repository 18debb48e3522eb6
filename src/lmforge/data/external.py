"""External test sets (evaluate.external): labelled texts from outside the training corpora.

Each set is read through the same loader as data.task (lmforge.data.sources), cleaned the same way
(lmforge.data.cleaning), checked against every document of every corpus and split that preprocess kept
(data/processed/text_digests.npy, compared on normalised words), and asked as the task examples are
(review + prompt, lmforge.data.examples.encode_prompts). Texts the models have seen are dropped and
counted, never silently kept; a set that is mostly such texts is no external test and stops the stage.
All of it happens before any model is loaded, so a bad set costs seconds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmforge import paths
from lmforge.config import ExternalSetConfig
from lmforge.data import sources
from lmforge.data.cleaning import DocumentFilter, overlap_key
from lmforge.data.examples import encode_prompts
from lmforge.errors import ConfigError, DataError, missing_input

log = logging.getLogger(__name__)

MAX_OVERLAP = 0.5  # a set with more than this share of texts seen in training is not an external test
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class ExternalSet:
    name: str
    prompts: list[list[int]]
    labels: list[int]
    stats: dict[str, Any]
    texts: list[str]  # what `prompts` encode: a model with its own tokenizer encodes them again


def load_external_sets(specs: list[ExternalSetConfig], tokenizer: PreTrainedTokenizerBase, task_meta: dict,
                       ) -> list[ExternalSet]:
    """Every configured set, read, cleaned, checked for overlap and tokenised; errors name the set."""
    names = [spec.name for spec in specs]
    for i, name in enumerate(names):
        if not _NAME.match(name):
            raise ConfigError(f"invalid value for 'evaluate.external[{i}].name': {name!r} (expected an identifier: "
                              "a letter, then letters, digits or _)")
        if names.index(name) != i:
            raise ConfigError(f"invalid value for 'evaluate.external[{i}].name': {name!r} is used twice")
    if not specs:
        return []
    if not paths.TEXT_DIGESTS.is_file():
        raise missing_input(paths.TEXT_DIGESTS, "not found: external test sets are checked against it")
    known = np.load(paths.TEXT_DIGESTS, allow_pickle=False)
    return [_load_one(i, spec, tokenizer, task_meta, known) for i, spec in enumerate(specs)]


def _load_one(index: int, spec: ExternalSetConfig, tokenizer: PreTrainedTokenizerBase, task_meta: dict,
              known: np.ndarray) -> ExternalSet:
    key = f"evaluate.external[{index}] ({spec.name})"
    n_labels = len(task_meta["label_words"])
    n_values = len(spec.corpus.label_files) or len(spec.corpus.label_values)
    if n_values != n_labels:
        raise ConfigError(f"{key}: {n_values} labels (label_files or label_values) for the task's {n_labels} "
                          f"label words {task_meta['label_words']}")
    texts, labels = sources.load_corpus(spec.corpus, key, spec.source == "hub", spec.max_examples, labelled=True)
    cleaner = DocumentFilter(min_chars=1, dedupe="exact", detokenize=spec.corpus.detokenize)
    kept = list(cleaner(texts))
    if not kept:
        raise DataError(f"{key}: no text left after cleaning the {len(texts)} rows read")
    keys = np.fromiter((overlap_key(text) for _, text in kept), dtype=np.uint64, count=len(kept))
    seen = np.isin(keys, known)
    overlap = int(seen.sum())
    if overlap > MAX_OVERLAP * len(kept):
        raise DataError(f"{key}: {overlap} of its {len(kept)} texts ({overlap / len(kept):.0%}) occur in the "
                        "training corpora (any split), so it is not an external test set")
    fresh = [(i, text) for (i, text), dup in zip(kept, seen, strict=True) if not dup]
    prompts, truncated = encode_prompts([text for _, text in fresh], tokenizer, task_meta["prompt"],
                                        task_meta["block_size"])
    stats = {"source": spec.source, "rows_read": len(texts),
             "duplicates_removed": cleaner.counts["duplicates_removed"],
             "empty_removed": cleaner.counts["too_short_removed"], "overlap_with_training_dropped": overlap,
             "examples": len(fresh), "truncated": sum(truncated),
             "positive_fraction": round(float(np.mean([labels[i] == 1 for i, _ in fresh])), 4)}
    if overlap:
        log.warning("%s: dropped %d texts that occur in the training corpora", key, overlap)
    log.info("%s: %d examples (%d rows read)", key, len(fresh), len(texts))
    return ExternalSet(spec.name, prompts, [labels[i] for i, _ in fresh], stats, [text for _, text in fresh])
