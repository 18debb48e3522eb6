"""Facts of the examples every layer above agrees on: the label value a loss skips, BERT's masking share (a
training objective and evaluate's masked perplexity mask alike), and next-sentence pairs built from LM blocks
(pre-training trains on them, evaluate measures them), and the prompt every model is asked (task examples and
external test sets alike)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value the loss skips
MLM_PROBABILITY = 0.15  # BERT's: of the real tokens of a block, this share is masked and predicted


def nsp_pairs(blocks: Dataset, cls_id: int, sep_id: int, seed: int) -> Dataset:
    """Next-sentence pairs from the LM blocks of one split: block i's first half A, then its second half B
    (label 0, "is next") or the second half of another block of the same split (label 1, "random"), each
    with probability 1/2. Built per split, so no pair crosses a split. The segments are spans of packed text
    (RoBERTa's finding: segments serve NSP as well as linguistic sentences)."""
    ids = np.asarray(blocks["input_ids"], dtype=np.int64)
    n, length = ids.shape
    if n < 2:
        raise ValueError(f"next-sentence pairs need at least 2 blocks, the split has {n}")
    half = (length - 3) // 2  # [CLS] A [SEP] B [SEP] fits in one block
    rng = np.random.default_rng(seed)
    random_next = rng.random(n) < 0.5
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # any block but i itself
    source = np.where(random_next, other, np.arange(n))
    first, second = ids[:, :half], ids[source, half:2 * half]
    column = np.full((n, 1), 0, dtype=np.int64)
    input_ids = np.concatenate([column + cls_id, first, column + sep_id, second, column + sep_id], axis=1)
    token_type_ids = np.concatenate([np.zeros((n, half + 2), np.int64), np.ones((n, half + 1), np.int64)], axis=1)
    return Dataset.from_dict({"input_ids": input_ids.tolist(), "token_type_ids": token_type_ids.tolist(),
                              "next_sentence_label": random_next.astype(np.int64).tolist()})


def encode_prompts(texts: list[str], tokenizer: PreTrainedTokenizerBase, prompt: str,
                   block_size: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of review + prompt, as every model is asked (task examples and external test sets alike),
    and whether each was truncated: a review too long for the block keeps its end, leaving one position
    for the label word."""
    room = block_size - 1
    ids = tokenizer([text + prompt for text in texts])["input_ids"]
    cls = tokenizer.cls_token_id  # an encoder's classifier reads [CLS]: it stays first
    kept = [x[:1] + x[len(x) - room + 1:] if cls is not None and x[0] == cls and len(x) > room else x[-room:]
            for x in ids]
    return kept, [len(x) > room for x in ids]
