"""The transfer set: the texts a student learns the teacher from, and the one reader and writer of data/transfer.

A task-specific student learns best from more text than the labelled train split (TinyBERT, Jiao et al. 2020;
Tang et al. 2019, "Distilling task-specific knowledge from BERT into simple neural networks"). The transfer set
holds, each row a text the teacher labels with its soft outputs:

    task        the labelled train split (its true label kept for the CE term)
    domain      the unlabelled in-domain documents (data/processed/domain_text; train split only)
    augmented   `transfer.augment.copies` perturbed copies of each of those texts (label -1: the teacher's
                output is the only target), by the methods of `transfer.augment`:
                  word_dropout  each word dropped with probability p (Tang et al.'s masking, without a [MASK]
                                token: the student and the teacher may not share a vocabulary)
                  ngram         with probability p the copy is a random span of ngram_min..ngram_max words
                                of the text (Tang et al.'s n-gram sampling)
                  mlm_replace   each word replaced with probability p by a masked LM's guess in context
                                (TinyBERT's word replacement; the masked LM is a local folder: models/general
                                of an encoder profile, or any masked LM on disk)

Validation and test texts never enter it: every text of the set (augmented copies too) is checked against the
task's validation and test texts, and the whole check is recorded in meta.json. Texts are stored as text, so a
student with another tokenizer reads them with its own (lmforge.data.processed.encode_for).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_from_disk

from lmforge import paths
from lmforge.artifacts import atomic_dir, read_json, write_json
from lmforge.config import TransferConfig
from lmforge.errors import DataError, missing_input, require

log = logging.getLogger(__name__)

EXAMPLES = "examples"
META = "meta.json"
NO_LABEL = -1
_WORD = re.compile(r"\S+")


def _stable_seed(seed: int, *parts: object) -> int:
    """A seed for one text's perturbation that does not depend on the order of the set."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def word_dropout(text: str, p: float, rng: np.random.Generator) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept) if kept else text


def ngram(text: str, n_min: int, n_max: int, rng: np.random.Generator) -> str:
    words = text.split()
    if len(words) <= n_min:
        return text
    n = int(rng.integers(n_min, min(n_max, len(words)) + 1))
    start = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[start:start + n])


def augment(texts: Sequence[str], cfg: TransferConfig, seed: int,
            replace: Callable[[list[str], np.random.Generator], list[str]] | None = None) -> list[tuple[int, str]]:
    """`cfg.augment.copies` perturbed copies of each text, as (index of the original, copy); a copy equal to its
    original is dropped (it adds nothing). Deterministic in `seed` and each text, not in the order of `texts`.
    `replace` (the masked-LM word replacement, a model call) perturbs a batch of texts at once."""
    aug = cfg.augment
    out: list[tuple[int, str]] = []
    pending: list[tuple[int, str, np.random.Generator]] = []
    for i, text in enumerate(texts):
        for copy in range(aug.copies):
            rng = np.random.default_rng(_stable_seed(seed, copy, text))
            new = text
            if aug.ngram > 0 and rng.random() < aug.ngram:
                new = ngram(new, aug.ngram_min, aug.ngram_max, rng)
            if aug.word_dropout > 0:
                new = word_dropout(new, aug.word_dropout, rng)
            pending.append((i, new, rng))
    if replace is not None and aug.mlm_replace > 0:
        batch = 64
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            rng = chunk[0][2]
            replaced = replace([t for _, t, _ in chunk], rng)
            pending[start:start + batch] = [(i, t, r) for (i, _, r), t in zip(chunk, replaced, strict=True)]
    for i, new, _ in pending:
        if new != texts[i]:
            out.append((i, new))
    return out


def masked_lm_replacer(folder: str | Path, p: float, max_length: int = 128
                       ) -> Callable[[list[str], np.random.Generator], list[str]]:
    """TinyBERT's word replacement: each word, with probability `p`, becomes the masked LM's most likely token
    for its position given the rest of the text (one [MASK] per chosen word, all of a text's masks in one
    forward; a chosen word that is split into several tokens keeps its first piece masked, its other pieces
    dropped). `folder`: a local masked LM (safetensors; never trust_remote_code)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = require(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False).eval()
    if tokenizer.mask_token is None:
        raise DataError(f"transfer.augment.masked_lm: {folder} has no mask token: not a masked LM; "
                        "set transfer.augment.mlm_replace: 0 or name a masked LM folder")
    special = set(tokenizer.all_special_ids)

    @torch.inference_mode()
    def replace(texts: list[str], rng: np.random.Generator) -> list[str]:
        words = [t.split() for t in texts]
        chosen = [[rng.random() < p for _ in w] for w in words]
        masked = [" ".join(tokenizer.mask_token if c else x for x, c in zip(w, ch, strict=True))
                  for w, ch in zip(words, chosen, strict=True)]
        enc = tokenizer(masked, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        logits = model(**enc).logits
        logits[..., list(special)] = float("-inf")  # a word never becomes [CLS], [SEP], [PAD] or [MASK]
        guesses = logits.argmax(-1)
        out = []
        for row, (w, ch) in enumerate(zip(words, chosen, strict=True)):
            positions = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero().flatten().tolist()
            fills = iter(tokenizer.convert_ids_to_tokens(guesses[row, positions].tolist()))
            new = []
            for x, c in zip(w, ch, strict=True):
                if not c:
                    new.append(x)
                    continue
                token = next(fills, None)  # None: the text was truncated before this mask
                new.append(x if token is None else token.removeprefix("##").removeprefix("Ġ").removeprefix("▁"))
            out.append(" ".join(new))
        return out

    return replace


def transfer_texts(cfg: TransferConfig, seed: int, replace: Callable | None = None) -> tuple[Dataset, int]:
    """(the set: columns text, source, label; how many texts equal to an evaluation text were dropped): the task
    train split, the unlabelled in-domain text and their augmented copies, deduplicated, without any task
    validation or test text."""
    task = load_from_disk(str(require(paths.TASK)))
    rows: dict[str, tuple[str, int]] = {}  # text -> (source, label); the first source of a text wins
    if cfg.task:
        for text, label in zip(task["train"]["text"], task["train"]["label"], strict=True):
            rows.setdefault(text, ("task", int(label)))
    if cfg.domain:
        domain = load_from_disk(str(require(paths.DOMAIN_TEXT)))["text"]
        for text in domain[: cfg.max_domain_texts]:
            rows.setdefault(text, ("domain", NO_LABEL))
    if not rows:
        raise DataError("transfer: no texts (transfer.task and transfer.domain are both false); enable one")
    originals = list(rows)
    for _, text in augment(originals, cfg, seed, replace):
        rows.setdefault(text, ("augmented", NO_LABEL))
    held_out = set(task["validation"]["text"]) | set(task["test"]["text"])
    leaked = [t for t in rows if t in held_out]
    if leaked:  # an augmented copy that happens to equal an evaluation text: dropped, and counted
        log.info("transfer: %d texts equal to a validation or test text dropped", len(leaked))
        for text in leaked:
            del rows[text]
    texts = list(rows)
    return Dataset.from_dict({"text": texts, "source": [rows[t][0] for t in texts],
                              "label": [rows[t][1] for t in texts]}), len(leaked)


def save(examples: Dataset, meta: dict[str, Any]) -> None:
    """data/transfer, written whole (a failed run leaves the previous one)."""
    with atomic_dir(paths.TRANSFER) as out:
        examples.save_to_disk(str(out / EXAMPLES))
        write_json(out / META, meta)


def load() -> Dataset:
    """The transfer set with the teacher's outputs (columns text, source, label, teacher_logits)."""
    folder = paths.TRANSFER / EXAMPLES
    if not folder.is_dir():
        raise missing_input(folder, "not found: distill.data=transfer reads the teacher's cached outputs")
    return load_from_disk(str(folder))


def meta() -> dict[str, Any]:
    return read_json(require(paths.TRANSFER / META))
