"""Preprocess: raw corpora -> data/processed (tokenizer, LM blocks, task examples) + metrics.

    dvc repro preprocess            # or, from the repository root: python stages/preprocess.py

The recipe (its steps are lmforge.data.preprocess): check -> load raw corpora (synthetic, local files or hub
datasets) -> detokenise, clean, dedupe, length filters -> (carve the domain corpus out of the task reviews) ->
split by hash -> leakage check -> train a tokenizer or load models/base's, check the label words -> pack LM
blocks, encode task examples -> save atomically -> metrics, with the bag-of-words and majority baselines.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from typing import Any

from datasets import Dataset, DatasetDict

from lmforge import paths, stage
from lmforge.artifacts import atomic_dir, write_json
from lmforge.config import DataConfig, Params, PreprocessConfig
from lmforge.data.baseline import bow_accuracy, majority_accuracy
from lmforge.data.cleaning import DocumentFilter, normalized_key
from lmforge.data.preprocess import (
    LM_CORPORA,
    SPLITS,
    carve_domain,
    check_label_words,
    check_leakage,
    clean_corpus,
    load_base_tokenizer,
    load_raw,
    pack,
    require_every_split,
    save_text_digests,
    spill_corpus,
    split_by_hash,
    task_examples,
    tokenizer_corpus,
    train_tokenizer,
    validate,
)
from lmforge.errors import DataError
from lmforge.modeling.family import is_encoder

PARAMS = ("seed", "data", "preprocess", "model.arch")  # model.arch: an encoder's tokenizer gets BERT's specials
log = logging.getLogger("lmforge.preprocess")


def main(params: Params) -> dict[str, Any]:
    data_cfg: DataConfig = params.data
    cfg: PreprocessConfig = params.preprocess
    # check what needs no data, before any expensive work
    validate(cfg)

    # load and clean the raw corpora; split the task by hash

    log.info("loading %s corpora (seed %d)", data_cfg.source, params.seed)
    raw = load_raw(data_cfg, params.seed)
    if any(not 0 <= y < len(cfg.label_words) for y in raw.task_labels):
        raise DataError(f"task labels must be indices into preprocess.label_words "
                        f"(0..{len(cfg.label_words) - 1}), found {sorted(set(raw.task_labels))}")

    metrics: dict[str, Any] = {"sources": {}}
    carve = data_cfg.domain_from_task is not None
    task_detokenize = data_cfg.task.detokenize if data_cfg.task else "none"
    task, metrics["sources"]["task"] = clean_corpus("task", raw.task_texts, cfg.min_chars, cfg.max_chars,
                                                    cfg.dedupe, task_detokenize)
    lm_docs: dict[str, Iterable[str]] = {"general": raw.general, "domain": raw.domain}
    if carve:  # the domain corpus is a share of the cleaned task reviews, without their labels
        domain, task = carve_domain(task, data_cfg.domain_from_task)
        metrics["sources"]["task"]["moved_to_domain"] = len(domain)
        metrics["sources"]["task"]["docs_out"] = len(task)
        lm_docs["domain"] = [text for _, text in domain]
    labels = {text: raw.task_labels[i] for i, text in task}  # texts are unique after dedupe
    splits: dict[str, dict[str, Any]] = {
        "task": split_by_hash("task", [text for _, text in task], cfg.val_fraction, cfg.test_fraction)}
    require_every_split("task", splits["task"], cfg.val_fraction, cfg.test_fraction)
    metrics["sources"] = {name: {} for name in ("general", "domain")} | metrics["sources"]  # report order

    # spill, check for leakage, tokenize and pack into data/processed (saved whole, atomically)
    tokenizer = load_base_tokenizer() if cfg.tokenizer == "base" else None
    with atomic_dir(paths.PROCESSED) as out:
        work = out / ".work"  # cleaned text and packed blocks before save_to_disk; removed below
        work.mkdir()
        for name, docs in lm_docs.items():
            if carve and name == "domain":  # already cleaned as task reviews
                splits[name], _ = spill_corpus(name, docs, None, cfg, work)
                metrics["sources"]["domain"] = {"docs_in": len(docs), "docs_out": len(docs)}
            else:
                spec = getattr(data_cfg, name, None)
                docs_filter = DocumentFilter(cfg.min_chars, cfg.max_chars, cfg.dedupe,
                                             spec.detokenize if spec else "none")
                splits[name], metrics["sources"][name] = spill_corpus(name, docs, docs_filter, cfg, work)
        key = normalized_key if cfg.dedupe == "normalized" else None
        metrics["leakage"] = check_leakage(splits, key=key, disjoint_task_domain=carve)
        save_text_digests(splits, out / paths.TEXT_DIGESTS.name)

        if tokenizer is None:
            tokenizer = train_tokenizer(tokenizer_corpus(splits, labels, cfg), cfg.vocab_size,
                                        encoder=params.model is not None and is_encoder(params.model.arch))
        label_token_ids = check_label_words(tokenizer, cfg)
        tokenizer.save_pretrained(out / paths.TOKENIZER.name)
        metrics["vocab_size"] = len(tokenizer)
        metrics["label_token_ids"] = label_token_ids

        for name, path in LM_CORPORA.items():
            blocks, metrics[path.name] = {}, {}
            for split in SPLITS:
                blocks[split], metrics[path.name][split] = pack(
                    splits[name][split], tokenizer, cfg.block_size, name, split, work / f"{name}-{split}.blocks.arrow")
            DatasetDict(blocks).save_to_disk(out / path.name)
            del blocks

        task_sets, metrics["task"] = task_examples(splits["task"], labels, tokenizer, cfg)
        task_sets.save_to_disk(out / paths.TASK.name)
        # the unlabelled in-domain documents as text: the transfer set reads them with any model's tokenizer
        Dataset.from_dict({"text": list(splits["domain"]["train"])}).save_to_disk(out / paths.DOMAIN_TEXT.name)
        write_json(out / paths.TASK_META.name, {"prompt": cfg.prompt, "label_words": cfg.label_words,
                                                "label_token_ids": label_token_ids,
                                                "block_size": cfg.block_size})
        shutil.rmtree(work)
    log.info("wrote %s", paths.PROCESSED)

    # metrics: the task baselines a model must beat
    train, test = splits["task"]["train"], splits["task"]["test"]
    train_labels, test_labels = [labels[t] for t in train], [labels[t] for t in test]
    metrics["bow_baseline_accuracy"] = bow_accuracy(train, train_labels, test, test_labels)
    metrics["majority_accuracy"] = majority_accuracy(train_labels, test_labels)
    log.info("task test accuracy: bag of words (unigrams + bigrams) %.3f, majority class %.3f",
             metrics["bow_baseline_accuracy"], metrics["majority_accuracy"])
    stage.write_metrics(paths.METRICS / "preprocess.json", metrics)
    return metrics


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
