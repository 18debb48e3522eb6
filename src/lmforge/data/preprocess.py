"""The steps of raw corpora -> data/processed (layout in `lmforge.paths`), each returning its metrics; the
recipe that runs them in order is stages/preprocess.py:

validate -> load raw corpora (synthetic, local files or hub datasets) -> detokenise, clean, dedupe,
length filters -> (carve the domain corpus out of the task reviews) -> split by hash -> leakage
check -> train a tokenizer or load models/base's, check the label words -> pack LM blocks, encode
task examples -> save atomically -> bag-of-words baseline.

The language-modelling corpora (general, domain) stream through these steps a document at a time:
cleaned text is spilled to Arrow files per split, the tokenizer trains from them and packing reads
them back in batches, so a corpus larger than memory is fine. Memory holds one batch, the 16-byte
digests of the duplicate and leakage checks, and the labelled task corpus (small by nature).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from datasets.table import MemoryMappedTable
from datasets.utils.tqdm import tqdm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmforge import paths
from lmforge.config import DataConfig, PreprocessConfig
from lmforge.data import RawCorpora, sources, synthetic
from lmforge.data.arrow_files import BlockWriter, TextFile
from lmforge.data.cleaning import DocumentFilter, digest, overlap_key
from lmforge.data.examples import encode_prompts
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPLITS = ("train", "validation", "test")
LM_CORPORA = {"general": paths.LM_GENERAL, "domain": paths.LM_DOMAIN}
CHARS_PER_TOKENIZER_CALL = 1 << 18  # enough text to amortise a batch call; its token lists take ~25x its size

# data.source -> loader; a `local` or `hub` loader returns the same RawCorpora
SOURCES: dict[str, Callable[[DataConfig, int], RawCorpora]] = {
    "synthetic": synthetic.generate, "local": sources.load_real, "hub": sources.load_real}
BASE_TOKENIZER = paths.MODELS / "base"  # written by the base stage (a pretrained checkpoint)


def validate(cfg: PreprocessConfig) -> None:
    """Checks that need no data, done before any expensive work."""
    words = cfg.label_words
    if len(set(words)) < 2:
        raise ConfigError(f"preprocess.label_words must hold at least 2 distinct words, got {words!r}")
    if any(not w.strip() for w in words):
        raise ConfigError(f"preprocess.label_words: every word must be non-blank, got {words!r}")
    if not cfg.prompt.strip():
        raise ConfigError(f"preprocess.prompt must be non-blank, got {cfg.prompt!r}")


def load_raw(cfg: DataConfig, seed: int) -> RawCorpora:
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source: unknown source {cfg.source!r} "
                          f"(expected one of {', '.join(SOURCES)})")
    if cfg.source == "synthetic":
        for key in ("general", "domain", "task", "domain_from_task"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"data.{key} must be null with data.source=synthetic (it generates its "
                                  f"corpora; use data=local or data=hub to read files)")
        for key in ("general_docs", "domain_docs", "task_examples"):
            if getattr(cfg, key) is None:
                raise ConfigError(f"data.{key}: data.source=synthetic needs a number of documents, got null")
    return SOURCES[cfg.source](cfg, seed)


def clean_corpus(name: str, docs: Iterable[str], min_chars: int, max_chars: int | None = None,
                 dedupe_mode: str = "exact", detokenize: str = "none") -> tuple[list[tuple[int, str]], dict]:
    """Cleaned documents as (index into `docs`, text), duplicates and short / long ones removed, and
    the count of every step (in memory: for the labelled task corpus; LM corpora stream, see above)."""
    docs_filter = DocumentFilter(min_chars, max_chars, dedupe_mode, detokenize)
    kept = list(docs_filter(docs))
    return kept, report_cleaning(name, docs_filter, min_chars, max_chars)


def spill_corpus(name: str, docs: Iterable[str], docs_filter: DocumentFilter | None, cfg: PreprocessConfig,
                 folder: Path) -> tuple[dict[str, TextFile], dict | None]:
    """Stream a corpus through `docs_filter` (None: already clean) and the hash split into one Arrow
    file per split in `folder`: ({split: TextFile}, cleaning counts). A document at a time, so the
    corpus may be larger than memory."""
    if docs_filter is not None:
        docs = (text for _, text in docs_filter(docs))
    files = {split: TextFile(folder / f"{name}-{split}.text.arrow") for split in SPLITS}
    split_by_hash(name, docs, cfg.val_fraction, cfg.test_fraction, files)
    for file in files.values():
        file.close()
    stats = report_cleaning(name, docs_filter, cfg.min_chars, cfg.max_chars) if docs_filter else None
    require_every_split(name, files, cfg.val_fraction, cfg.test_fraction)
    return files, stats


def report_cleaning(name: str, docs_filter: DocumentFilter, min_chars: int, max_chars: int | None) -> dict:
    """Log what cleaning did to a corpus and return the counts; an empty result is an error."""
    stats = dict(docs_filter.counts)
    log.info("%s: %d documents in, %d detokenised, %d changed by cleaning, %d exact and %d normalised "
             "duplicates, %d shorter than %d and %d longer than %s characters removed, %d kept", name,
             stats["docs_in"], stats["detokenized"], stats["changed_by_cleaning"], stats["duplicates_removed"],
             stats["normalized_duplicates_removed"], stats["too_short_removed"], min_chars,
             stats["too_long_removed"], max_chars, stats["docs_out"])
    if not stats["docs_out"]:
        raise DataError(f"{name} corpus is empty after cleaning: {stats['docs_in']} documents in, 0 kept "
                        f"({stats['duplicates_removed']} duplicates, {stats['normalized_duplicates_removed']} "
                        f"normalised duplicates, min_chars={min_chars} dropped {stats['too_short_removed']}, "
                        f"max_chars={max_chars} dropped {stats['too_long_removed']})")
    return stats


def carve_domain(task: list[tuple[int, str]], fraction: float) -> tuple[list, list]:
    """(domain, task): a stable share of the cleaned, deduplicated task reviews becomes unlabelled
    domain text, the rest stays labelled; no review is in both."""
    domain, rest = [], []
    for item in task:
        (domain if _unit_hash("domain/" + item[1]) < fraction else rest).append(item)
    log.info("domain corpus: %d of %d task reviews (domain_from_task=%s), %d stay labelled",
             len(domain), len(task), fraction, len(rest))
    if not domain or not rest:
        raise DataError(f"domain_from_task={fraction} leaves {len(domain)} domain and {len(rest)} task "
                        f"reviews out of {len(task)}; use more reviews or another share")
    return domain, rest


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """A stable split from a hash of the text: the same text lands in the same split in every
    corpus and every run, so an exact duplicate across corpora cannot leak into training."""
    u = _unit_hash(text)
    return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def split_by_hash(name: str, docs: Iterable[str], val_fraction: float, test_fraction: float,
                  parts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each document to its split (`split_of`). `parts` are where they go: lists by default, or anything
    with `append` and `len` (the TextFiles of `spill_corpus`)."""
    parts = parts if parts is not None else {split: [] for split in SPLITS}
    for doc in docs:
        parts[split_of(doc, val_fraction, test_fraction)].append(doc)
    log.info("%s split: %s", name, ", ".join(f"{s} {len(d)}" for s, d in parts.items()))
    return parts


def require_every_split(name: str, parts: dict[str, Any], val_fraction: float, test_fraction: float) -> None:
    empty = [split for split, d in parts.items() if not len(d)]
    if empty:
        raise DataError(f"{name} corpus has no {empty[0]} documents after splitting "
                        f"{sum(len(d) for d in parts.values())} (val_fraction={val_fraction}, "
                        f"test_fraction={test_fraction}); use more documents or larger fractions")


def check_leakage(splits: dict[str, dict[str, Iterable[str]]], key: Callable[[str], str] | None = None,
                  disjoint_task_domain: bool = False) -> dict[str, int]:
    """Count overlaps that would leak evaluation text into training, within each corpus and between
    corpora (compared by `key`, e.g. `normalized_key`; exact text by default); all must be 0. With
    `disjoint_task_domain` (domain carved out of the task reviews) no task review may be domain text.
    Texts are compared by digest, so only 16 bytes per document are held."""
    key = key or (lambda text: text)
    keys = {name: {split: [digest(key(doc)) for doc in docs] for split, docs in parts.items()}
            for name, parts in splits.items()}
    train = {name: set(parts["train"]) for name, parts in keys.items()}
    pairs = [(name, name) for name in splits]  # (evaluated corpus, training corpus)
    pairs += [("task", "domain"), ("general", "domain"), ("domain", "general"), ("task", "general")]
    overlaps = {}
    for evaluated, trained in pairs:
        where = "train" if evaluated == trained else f"{trained}_train"
        for split in ("validation", "test"):
            overlaps[f"{evaluated}_{split}_in_{where}"] = sum(k in train[trained]
                                                              for k in keys[evaluated][split])
    if disjoint_task_domain:
        domain_all = set().union(*keys["domain"].values())
        overlaps["task_in_domain"] = sum(k in domain_all for part in keys["task"].values() for k in part)
    leaks = {k: v for k, v in overlaps.items() if v}
    if leaks:
        raise DataError("evaluation text found in training data: "
                        + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in leaks.items()))
    log.info("leakage check: no validation or test text occurs in training data")
    return overlaps


def save_text_digests(splits: dict[str, dict[str, Iterable[str]]], path: Path) -> None:
    """The `overlap_key` of every document of every corpus and split, sorted (8 bytes a document), so that
    evaluate can drop the texts of an external test set that the models have seen or been tested on."""
    keys = np.fromiter((overlap_key(doc) for parts in splits.values() for docs in parts.values() for doc in docs),
                       dtype=np.uint64)
    np.save(path, np.unique(keys), allow_pickle=False)


def tokenizer_corpus(splits: dict[str, dict[str, Iterable[str]]], labels: dict[str, int],
                     cfg: PreprocessConfig) -> Iterable[str]:
    """Training splits only, task examples formatted as the models will see them."""
    yield from splits["general"]["train"]
    yield from splits["domain"]["train"]
    for text in splits["task"]["train"]:
        yield text + cfg.prompt + cfg.label_words[labels[text]]


def load_base_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer of the pretrained checkpoint in models/base (preprocess.tokenizer=base), with
    a pad token (eos when it has none): the pipeline then starts from that model's vocabulary."""
    if not (BASE_TOKENIZER / "tokenizer_config.json").is_file():
        raise DataError(f"preprocess.tokenizer=base: no tokenizer in {BASE_TOKENIZER} (expected "
                        f"{BASE_TOKENIZER / 'tokenizer_config.json'}); run the base stage first, or use "
                        f"preprocess.tokenizer=train")
    tokenizer = AutoTokenizer.from_pretrained(BASE_TOKENIZER)
    if tokenizer.eos_token_id is None and tokenizer.sep_token_id is None:
        raise DataError(f"the tokenizer in {BASE_TOKENIZER} has no eos token (nor an encoder's [SEP]): documents "
                        f"cannot be separated in packed blocks")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("using the tokenizer of %s (%d tokens)", BASE_TOKENIZER, len(tokenizer))
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int, encoder: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style: any text encodes, nothing is unknown). For an encoder (BERT) it has
    BERT's special tokens and wraps every text as [CLS] text [SEP], as a pretrained BERT tokenizer does."""
    log.info("training a byte-level BPE tokenizer (vocab_size=%d%s)", vocab_size, ", BERT special tokens" * encoder)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = BERT_SPECIAL if encoder else [EOS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if not encoder:
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS,
                                       unk_token=EOS, pad_token=EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    pad, unk, cls, sep, mask = BERT_SPECIAL
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, unk_token=unk, cls_token=cls,
                                   sep_token=sep, mask_token=mask)


def check_label_words(tokenizer: PreTrainedTokenizerBase, cfg: PreprocessConfig) -> list[int]:
    """Each label word must be exactly one token, also right after the prompt (accuracy compares
    the model's log-likelihood of one token per label)."""
    ids = []
    for word in cfg.label_words:
        tokens = tokenizer.encode(word, add_special_tokens=False)  # an encoder's would add [CLS] and [SEP]
        if len(tokens) != 1:
            pieces = [tokenizer.decode([t]) for t in tokens]
            vocab = (f"the tokenizer of {BASE_TOKENIZER}" if cfg.tokenizer == "base"
                     else f"vocab_size={cfg.vocab_size}")
            raise DataError(f"label word {word!r} is not a single token: it became {len(tokens)} tokens "
                            f"{pieces} with {vocab}; use a larger "
                            f"preprocess.vocab_size or a different word in preprocess.label_words")
        if (tokenizer.encode(cfg.prompt + word, add_special_tokens=False)
                != tokenizer.encode(cfg.prompt, add_special_tokens=False) + tokens):
            raise DataError(f"label word {word!r} merges with the end of the prompt {cfg.prompt!r}; "
                            f"start the label words with a space")
        ids.append(tokens[0])
    prompt_len = len(tokenizer.encode(cfg.prompt))  # with an encoder's [CLS] and [SEP]
    if prompt_len + 2 > cfg.block_size:
        raise DataError(f"the prompt {cfg.prompt!r} is {prompt_len} tokens: no room for a review and a "
                        f"label word in block_size={cfg.block_size}")
    log.info("label words %s are tokens %s", cfg.label_words, ids)
    return ids


def pack(docs: Iterable[str], tokenizer: PreTrainedTokenizerBase, block_size: int, name: str, split: str,
         path: Path) -> tuple[Dataset, dict[str, int]]:
    """Tokenize, end each document with eos (an encoder's tokenizer makes it [CLS] text [SEP] itself), concatenate,
    cut into blocks of exactly block_size (a last, partial block is dropped). Streams: the tokenizer's batch
    encode takes ~256 kB of text at a time (its own threads parallelise it), and the blocks go straight from numpy
    to the Arrow file `path`, which the returned Dataset memory-maps."""
    eos = tokenizer.eos_token_id
    n_docs = n_tokens = 0
    rest = np.empty(0, dtype=np.int64)  # the tokens after the last full block, carried to the next batch
    progress = tqdm(total=len(docs) if hasattr(docs, "__len__") else None, unit=" docs",
                    desc=f"packing {name}/{split}")
    with BlockWriter(path, block_size) as writer, progress:
        for batch in _text_batches(docs, CHARS_PER_TOKENIZER_CALL):
            ids = tokenizer(batch, return_attention_mask=False)["input_ids"]
            end = [eos] if eos is not None else []
            count = sum(len(x) for x in ids) + len(ids) * len(end)
            flat = np.fromiter(itertools.chain.from_iterable(x + end for x in ids), dtype=np.int64, count=count)
            tokens = np.concatenate([rest, flat])
            full = len(tokens) // block_size * block_size
            writer.write(tokens[:full].reshape(-1, block_size))
            rest = tokens[full:]
            n_docs, n_tokens = n_docs + len(batch), n_tokens + count
            progress.update(len(batch))
    if writer.blocks == 0:
        raise DataError(f"{name} corpus, {split} split: {n_tokens} tokens make no block of "
                        f"block_size={block_size}; use more documents (data.{name}_docs) or a smaller "
                        f"preprocess.block_size")
    log.info("%s/%s: %d documents, %d tokens, %d blocks of %d", name, split, n_docs, n_tokens, writer.blocks,
             block_size)
    blocks = Dataset(MemoryMappedTable.from_file(str(path)), fingerprint=writer.fingerprint)
    return blocks, {"docs": n_docs, "tokens": n_tokens, "blocks": writer.blocks}


def _text_batches(docs: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive lists of documents holding about `chars` characters each."""
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _procs(num_proc: int, docs: list) -> int | None:
    """Worker processes for `Dataset.map`: None (in-process) unless several are asked for and the
    split is large enough to be worth starting them."""
    return num_proc if num_proc > 1 and len(docs) >= 1000 * num_proc else None


def task_examples(parts: dict[str, list[str]], labels: dict[str, int], tokenizer: PreTrainedTokenizerBase,
                  cfg: PreprocessConfig) -> tuple[DatasetDict, dict[str, Any]]:
    """Columns text, label, prompt_ids (review + prompt). A review too long for the block keeps its
    end: the tokens nearest the prompt, where the "but" clause that decides the label usually is."""
    prompt, block_size = cfg.prompt, cfg.block_size  # not cfg: Dataset.map fingerprints the closure

    def encode(batch: dict) -> dict:
        ids, truncated = encode_prompts(batch["text"], tokenizer, prompt, block_size)
        return {"prompt_ids": ids, "truncated": truncated}

    out, metrics = DatasetDict(), {}
    truncated = 0
    for split, texts in parts.items():
        ds = Dataset.from_dict({"text": texts, "label": [labels[t] for t in texts]})
        ds = ds.map(encode, batched=True, num_proc=_procs(cfg.num_proc, texts), desc=f"tokenizing task/{split}")
        truncated += sum(ds["truncated"])
        out[split] = ds.remove_columns("truncated")
        metrics[split] = {"examples": len(ds), "positive_fraction": float(np.mean(np.equal(ds["label"], 1)))}
        log.info("task/%s: %d examples, %.3f positive", split, len(ds), metrics[split]["positive_fraction"])
    metrics["truncated"] = truncated
    if truncated:
        log.info("task: %d reviews truncated from the left to fit block_size=%d", truncated, cfg.block_size)
    return out, metrics
