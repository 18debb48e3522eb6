"""Raw corpora -> data/processed (layout in `lmforge.paths`), and the metrics of every step.

validate -> load raw corpora (synthetic, local files or hub datasets) -> detokenise, clean, dedupe,
length filters -> (carve the domain corpus out of the task reviews) -> split by hash -> leakage
check -> train a tokenizer or load models/base's, check the label words -> pack LM blocks, encode
task examples -> save atomically -> bag-of-words baseline.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmforge import paths
from lmforge.artifacts import atomic_dir, write_json
from lmforge.config import DataConfig, PreprocessConfig
from lmforge.data import RawCorpora, sources, synthetic
from lmforge.data.baseline import bow_accuracy, majority_accuracy
from lmforge.data.cleaning import DETOKENIZERS, clean_text, dedupe, drop_long, drop_short, normalized_key
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
SPLITS = ("train", "validation", "test")
LM_CORPORA = {"general": paths.LM_GENERAL, "domain": paths.LM_DOMAIN}

# data.source -> loader; a `local` or `hub` loader returns the same RawCorpora
SOURCES: dict[str, Callable[[DataConfig, int], RawCorpora]] = {
    "synthetic": synthetic.generate, "local": sources.load_real, "hub": sources.load_real}
BASE_TOKENIZER = paths.MODELS / "base"  # written by the base stage (a pretrained checkpoint)


def preprocess(params: dict[str, Any]) -> dict[str, Any]:
    """Run the whole preprocess stage from validated params (`stage_params("data", "preprocess")`);
    writes data/processed and returns the metrics."""
    data_cfg: DataConfig = params["data"]
    cfg: PreprocessConfig = params["preprocess"]
    validate(cfg)

    log.info("loading %s corpora (seed %d)", data_cfg.source, params["seed"])
    raw = load_raw(data_cfg, params["seed"])
    if any(not 0 <= y < len(cfg.label_words) for y in raw.task_labels):
        raise DataError(f"task labels must be indices into preprocess.label_words "
                        f"(0..{len(cfg.label_words) - 1}), found {sorted(set(raw.task_labels))}")

    metrics: dict[str, Any] = {"sources": {}}
    kept = {}
    carve = data_cfg.domain_from_task is not None
    corpora = {"general": raw.general, "domain": raw.domain, "task": raw.task_texts}
    for name, docs in corpora.items():
        if name == "domain" and carve:
            continue  # made from the cleaned task reviews below
        spec = getattr(data_cfg, name, None)
        kept[name], metrics["sources"][name] = clean_corpus(
            name, docs, cfg.min_chars, cfg.max_chars, cfg.dedupe, spec.detokenize if spec else "none")
    if carve:
        kept["domain"], kept["task"] = carve_domain(kept["task"], data_cfg.domain_from_task)
        metrics["sources"]["task"]["moved_to_domain"] = len(kept["domain"])
        metrics["sources"]["task"]["docs_out"] = len(kept["task"])
        metrics["sources"]["domain"] = {"docs_in": len(kept["domain"]), "docs_out": len(kept["domain"])}
        kept = {name: kept[name] for name in corpora}  # the usual order
    texts = {name: [text for _, text in docs] for name, docs in kept.items()}
    labels = {text: raw.task_labels[i] for i, text in kept["task"]}  # texts are unique after dedupe

    splits = {name: split_by_hash(name, docs, cfg.val_fraction, cfg.test_fraction)
              for name, docs in texts.items()}
    key = normalized_key if cfg.dedupe == "normalized" else None
    metrics["leakage"] = check_leakage(splits, key=key, disjoint_task_domain=carve)

    tokenizer = load_base_tokenizer() if cfg.tokenizer == "base" else None
    with atomic_dir(paths.PROCESSED) as out:
        if tokenizer is None:
            tokenizer = train_tokenizer(tokenizer_corpus(splits, labels, cfg), cfg.vocab_size)
        label_token_ids = check_label_words(tokenizer, cfg)
        tokenizer.save_pretrained(out / paths.TOKENIZER.name)
        metrics["vocab_size"] = len(tokenizer)
        metrics["label_token_ids"] = label_token_ids

        for name, path in LM_CORPORA.items():
            blocks, metrics[path.name] = {}, {}
            for split in SPLITS:
                blocks[split], metrics[path.name][split] = pack(
                    splits[name][split], tokenizer, cfg.block_size, name, split, cfg.num_proc)
            DatasetDict(blocks).save_to_disk(out / path.name)

        task, metrics["task"] = task_examples(splits["task"], labels, tokenizer, cfg)
        task.save_to_disk(out / paths.TASK.name)
        write_json(out / paths.TASK_META.name, {"prompt": cfg.prompt, "label_words": cfg.label_words,
                                                "label_token_ids": label_token_ids,
                                                "block_size": cfg.block_size})
    log.info("wrote %s", paths.PROCESSED)

    train, test = splits["task"]["train"], splits["task"]["test"]
    train_labels, test_labels = [labels[t] for t in train], [labels[t] for t in test]
    metrics["bow_baseline_accuracy"] = bow_accuracy(train, train_labels, test, test_labels)
    metrics["majority_accuracy"] = majority_accuracy(train_labels, test_labels)
    log.info("task test accuracy: bag of words (unigrams + bigrams) %.3f, majority class %.3f",
             metrics["bow_baseline_accuracy"], metrics["majority_accuracy"])
    return metrics


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


def clean_corpus(name: str, docs: list[str], min_chars: int, max_chars: int | None = None,
                 dedupe_mode: str = "exact", detokenize: str = "none") -> tuple[list[tuple[int, str]], dict]:
    """Cleaned documents as (index into `docs`, text), duplicates and short / long ones removed, and
    the count of every step. Normalised duplicates are counted apart from exact ones."""
    detok = DETOKENIZERS[detokenize]
    detokenized = [detok(doc) for doc in docs]
    cleaned = [clean_text(doc) for doc in detokenized]
    kept, duplicates = dedupe(enumerate(cleaned), key=lambda item: item[1])
    near = 0
    if dedupe_mode == "normalized":
        kept, near = dedupe(kept, key=lambda item: normalized_key(item[1]))
    kept, too_short = drop_short(kept, min_chars, key=lambda item: item[1])
    kept, too_long = drop_long(kept, max_chars, key=lambda item: item[1])
    stats = {"docs_in": len(docs),
             "detokenized": sum(a != b for a, b in zip(docs, detokenized, strict=True)),
             "changed_by_cleaning": sum(a != b for a, b in zip(detokenized, cleaned, strict=True)),
             "duplicates_removed": duplicates, "normalized_duplicates_removed": near,
             "too_short_removed": too_short, "too_long_removed": too_long, "docs_out": len(kept)}
    log.info("%s: %d documents in, %d detokenised, %d changed by cleaning, %d exact and %d normalised "
             "duplicates, %d shorter than %d and %d longer than %s characters removed, %d kept", name,
             len(docs), stats["detokenized"], stats["changed_by_cleaning"], duplicates, near, too_short,
             min_chars, too_long, max_chars, len(kept))
    if not kept:
        raise DataError(f"{name} corpus is empty after cleaning: {len(docs)} documents in, 0 kept "
                        f"({duplicates} duplicates, {near} normalised duplicates, min_chars={min_chars} "
                        f"dropped {too_short}, max_chars={max_chars} dropped {too_long})")
    return kept, stats


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


def split_by_hash(name: str, docs: list[str], val_fraction: float,
                  test_fraction: float) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    for doc in docs:
        parts[split_of(doc, val_fraction, test_fraction)].append(doc)
    log.info("%s split: %s", name, ", ".join(f"{s} {len(d)}" for s, d in parts.items()))
    empty = [split for split, d in parts.items() if not d]
    if empty:
        raise DataError(f"{name} corpus has no {empty[0]} documents after splitting {len(docs)} "
                        f"(val_fraction={val_fraction}, test_fraction={test_fraction}); "
                        f"use more documents or larger fractions")
    return parts


def check_leakage(splits: dict[str, dict[str, list[str]]], key: Callable[[str], str] | None = None,
                  disjoint_task_domain: bool = False) -> dict[str, int]:
    """Count overlaps that would leak evaluation text into training, within each corpus and between
    corpora (compared by `key`, e.g. `normalized_key`; exact text by default); all must be 0. With
    `disjoint_task_domain` (domain carved out of the task reviews) no task review may be domain text."""
    key = key or (lambda text: text)
    keys = {name: {split: [key(doc) for doc in docs] for split, docs in parts.items()}
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


def tokenizer_corpus(splits: dict[str, dict[str, list[str]]], labels: dict[str, int],
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
    if tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer in {BASE_TOKENIZER} has no eos token: documents cannot be "
                        f"separated in packed blocks")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("using the tokenizer of %s (%d tokens)", BASE_TOKENIZER, len(tokenizer))
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style: any text encodes, nothing is unknown)."""
    log.info("training a byte-level BPE tokenizer (vocab_size=%d)", vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def check_label_words(tokenizer: PreTrainedTokenizerBase, cfg: PreprocessConfig) -> list[int]:
    """Each label word must be exactly one token, also right after the prompt (accuracy compares
    the model's log-likelihood of one token per label)."""
    ids = []
    for word in cfg.label_words:
        tokens = tokenizer.encode(word)
        if len(tokens) != 1:
            pieces = [tokenizer.decode([t]) for t in tokens]
            vocab = (f"the tokenizer of {BASE_TOKENIZER}" if cfg.tokenizer == "base"
                     else f"vocab_size={cfg.vocab_size}")
            raise DataError(f"label word {word!r} is not a single token: it became {len(tokens)} tokens "
                            f"{pieces} with {vocab}; use a larger "
                            f"preprocess.vocab_size or a different word in preprocess.label_words")
        if tokenizer.encode(cfg.prompt + word) != tokenizer.encode(cfg.prompt) + tokens:
            raise DataError(f"label word {word!r} merges with the end of the prompt {cfg.prompt!r}; "
                            f"start the label words with a space")
        ids.append(tokens[0])
    prompt_len = len(tokenizer.encode(cfg.prompt))
    if prompt_len + 2 > cfg.block_size:
        raise DataError(f"the prompt {cfg.prompt!r} is {prompt_len} tokens: no room for a review and a "
                        f"label word in block_size={cfg.block_size}")
    log.info("label words %s are tokens %s", cfg.label_words, ids)
    return ids


def pack(docs: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, name: str,
         split: str, num_proc: int = 1) -> tuple[Dataset, dict[str, int]]:
    """Tokenize, end each document with eos, concatenate, cut into blocks of exactly block_size."""
    eos = tokenizer.eos_token_id
    encoded = Dataset.from_dict({"text": docs}).map(
        lambda batch: {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"])["input_ids"]]},
        batched=True, remove_columns=["text"], num_proc=_procs(num_proc, docs), desc=f"tokenizing {name}/{split}")
    # flattened in Arrow, not through Python lists: a corpus costs 8 bytes a token here, not ~40
    flat = pc.list_flatten(encoded.data.column("input_ids")).to_numpy().astype(np.int64)
    n_blocks = len(flat) // block_size
    if n_blocks == 0:
        raise DataError(f"{name} corpus, {split} split: {len(flat)} tokens make no block of "
                        f"block_size={block_size}; use more documents (data.{name}_docs) or a smaller "
                        f"preprocess.block_size")
    blocks = flat[: n_blocks * block_size].reshape(n_blocks, block_size)
    log.info("%s/%s: %d documents, %d tokens, %d blocks of %d", name, split, len(docs), len(flat),
             n_blocks, block_size)
    return Dataset.from_dict({"input_ids": blocks.tolist()}), {"docs": len(docs), "tokens": len(flat),
                                                               "blocks": n_blocks}


def _procs(num_proc: int, docs: list) -> int | None:
    """Worker processes for `Dataset.map`: None (in-process) unless several are asked for and the
    split is large enough to be worth starting them."""
    return num_proc if num_proc > 1 and len(docs) >= 1000 * num_proc else None


def task_examples(parts: dict[str, list[str]], labels: dict[str, int], tokenizer: PreTrainedTokenizerBase,
                  cfg: PreprocessConfig) -> tuple[DatasetDict, dict[str, Any]]:
    """Columns text, label, prompt_ids (review + prompt). A review too long for the block keeps its
    end: the tokens nearest the prompt, where the "but" clause that decides the label usually is."""
    room = cfg.block_size - 1  # one position for the label word
    prompt = cfg.prompt  # not cfg: Dataset.map fingerprints the closure, so new config keys would change it

    def encode(batch: dict) -> dict:
        ids = tokenizer([text + prompt for text in batch["text"]])["input_ids"]
        return {"prompt_ids": [x[-room:] for x in ids], "truncated": [len(x) > room for x in ids]}

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
