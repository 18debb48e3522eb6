"""The preprocess stage end to end on the tiny profile, and its refusals of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from datasets import load_from_disk
from helpers import ROOT
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from lmforge import paths
from lmforge.compose import compose
from lmforge.config import stage_params
from lmforge.data.cleaning import DocumentFilter
from lmforge.data.preprocess import (
    check_leakage,
    clean_corpus,
    pack,
    spill_corpus,
    split_of,
    train_tokenizer,
)
from lmforge.errors import ConfigError, DataError
from stages.preprocess import main as preprocess


def tiny_params(directory: Path, **preprocess_overrides) -> dict:
    """params.yaml of the tiny profile composed from the real conf/, with some preprocess values changed."""
    compose(output=directory / "params.yaml", overrides=["profile=tiny"], conf_dir=ROOT / "conf")
    if preprocess_overrides:
        params = OmegaConf.load(directory / "params.yaml")
        for key, value in preprocess_overrides.items():
            params.preprocess[key] = value
        OmegaConf.save(params, directory / "params.yaml")
    return stage_params("data", "preprocess", path=directory / "params.yaml")


@pytest.fixture(scope="module")
def tiny_processed(tmp_path_factory):
    """(params, metrics) of one preprocess run on the tiny profile; cwd is its folder meanwhile."""
    directory = tmp_path_factory.mktemp("preprocess")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(directory)
        params = tiny_params(directory)
        metrics = preprocess(params)
        yield params, metrics


def file_digests(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_rerun_writes_the_same_bytes(tiny_processed, tmp_path, monkeypatch):
    """DVC compares outputs by hash: a rerun with the same inputs must not change data/processed (else every
    later stage reruns), whatever temporary paths it went through."""
    first = file_digests(Path.cwd() / paths.PROCESSED)
    monkeypatch.chdir(tmp_path)
    preprocess(tiny_params(tmp_path))
    assert file_digests(tmp_path / paths.PROCESSED) == first


def test_outputs_load(tiny_processed):
    params, metrics = tiny_processed
    cfg = params.preprocess
    tokenizer = AutoTokenizer.from_pretrained(paths.TOKENIZER)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert len(tokenizer) == metrics["vocab_size"] <= cfg.vocab_size
    meta = json.loads(paths.TASK_META.read_text())
    assert meta == {"prompt": cfg.prompt, "label_words": cfg.label_words,
                    "label_token_ids": metrics["label_token_ids"], "block_size": cfg.block_size}
    for word, token_id in zip(cfg.label_words, meta["label_token_ids"], strict=True):
        assert tokenizer.encode(word) == [token_id]
    for path in (paths.LM_GENERAL, paths.LM_DOMAIN, paths.TASK):
        assert sorted(load_from_disk(path)) == ["test", "train", "validation"]


def test_lm_blocks(tiny_processed):
    params, metrics = tiny_processed
    block_size = params.preprocess.block_size
    eos_id = AutoTokenizer.from_pretrained(paths.TOKENIZER).eos_token_id
    for path in (paths.LM_GENERAL, paths.LM_DOMAIN):
        data = load_from_disk(path)
        for split, ds in data.items():
            stats = metrics[path.name][split]
            assert len(ds) == stats["blocks"] == stats["tokens"] // block_size > 0
            assert {len(ids) for ids in ds["input_ids"]} == {block_size}
            eos = sum(ids.count(eos_id) for ids in ds["input_ids"])  # one eos per document
            assert stats["docs"] - 1 <= eos <= stats["docs"]  # the last may fall in the remainder


def test_task_examples(tiny_processed):
    params, metrics = tiny_processed
    cfg = params.preprocess
    tokenizer = AutoTokenizer.from_pretrained(paths.TOKENIZER)
    prompt_ids = tokenizer.encode(cfg.prompt)
    truncated = 0
    for split, ds in load_from_disk(paths.TASK).items():
        assert len(ds) == metrics["task"][split]["examples"]
        assert set(ds["label"]) == {0, 1}
        for example in ds:
            ids = example["prompt_ids"]
            assert len(ids) + 1 <= cfg.block_size and ids[-len(prompt_ids):] == prompt_ids
            full = tokenizer.encode(example["text"] + cfg.prompt)
            assert full[-len(ids):] == ids  # the end of the review is kept
            truncated += len(full) > len(ids)
    assert truncated == metrics["task"]["truncated"]


def test_metrics_add_up_and_no_leakage(tiny_processed):
    params, metrics = tiny_processed
    data = params.data
    sizes = {"general": data.general_docs, "domain": data.domain_docs, "task": data.task_examples}
    for name, stats in metrics["sources"].items():
        assert stats["docs_in"] == sizes[name]
        removed = (stats["duplicates_removed"] + stats["normalized_duplicates_removed"]
                   + stats["too_short_removed"] + stats["too_long_removed"])
        assert stats["docs_out"] == stats["docs_in"] - removed
    split_docs = {
        "general": sum(s["docs"] for s in metrics["lm_general"].values()),
        "domain": sum(s["docs"] for s in metrics["lm_domain"].values()),
        "task": sum(metrics["task"][s]["examples"] for s in ("train", "validation", "test")),
    }
    assert split_docs == {name: stats["docs_out"] for name, stats in metrics["sources"].items()}
    assert metrics["leakage"] and not any(metrics["leakage"].values())
    task = {split: set(ds["text"]) for split, ds in load_from_disk(paths.TASK).items()}
    assert not (task["test"] | task["validation"]) & task["train"]
    assert 0 < metrics["majority_accuracy"] < 1 and 0 < metrics["bow_baseline_accuracy"] <= 1
    json.dumps(metrics)  # what the stage writes


def test_clean_corpus_dedupes_after_cleaning():
    docs = ["the plot was good .", "the plot  was good .<br />", "short", "the acting was bad ."]
    kept, stats = clean_corpus("domain", docs, min_chars=10)
    assert kept == [(0, "the plot was good ."), (3, "the acting was bad .")]
    assert stats == {"docs_in": 4, "detokenized": 0, "changed_by_cleaning": 1, "duplicates_removed": 1,
                     "normalized_duplicates_removed": 0, "too_short_removed": 1, "too_long_removed": 0,
                     "docs_out": 2}
    with pytest.raises(DataError, match=r"domain corpus is empty .* 4 documents in, 0 kept .*=99 dropped 3"):
        clean_corpus("domain", docs, min_chars=99)


def test_split_is_a_stable_function_of_the_text():
    texts = [f"review number {i} ." for i in range(2000)]
    first = [split_of(t, 0.1, 0.2) for t in texts]
    assert first == [split_of(t, 0.1, 0.2) for t in texts]
    assert 0.07 < first.count("validation") / 2000 < 0.13 and 0.17 < first.count("test") / 2000 < 0.23


def test_leakage_is_refused():
    clean = {name: {"train": [f"{name} a"], "validation": [f"{name} b"], "test": [f"{name} c"]}
             for name in ("general", "domain", "task")}
    assert not any(check_leakage(clean).values())
    clean["domain"]["train"].append("task c")
    with pytest.raises(DataError, match="task test in domain train: 1"):
        check_leakage(clean)


def test_empty_corpus_leaves_existing_output_intact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = paths.PROCESSED / "sentinel.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("previous run")
    params = tiny_params(tmp_path, min_chars=100_000)
    with pytest.raises(DataError, match=r"task corpus is empty after cleaning: 300 documents in"):
        preprocess(params)
    assert [p.name for p in paths.PROCESSED.iterdir()] == ["sentinel.txt"]
    assert [p.name for p in paths.PROCESSED.parent.iterdir()] == ["processed"]  # no temporary left


def test_label_word_must_be_one_token(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path, label_words=[" absolutely-negative-sentiment", " positive"])
    with pytest.raises(DataError, match=r"label word ' absolutely-negative-sentiment' is not a single token"):
        preprocess(params)
    assert not paths.PROCESSED.exists()


def test_label_words_must_be_distinct(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="at least 2 distinct"):
        preprocess(tiny_params(tmp_path, label_words=[" positive", " positive"]))  # refused by validation


def test_stage_exits_2_with_a_clear_error(tmp_path):
    tiny_params(tmp_path, min_chars=100_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "stages" / "preprocess.py")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error: task corpus is empty after cleaning" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "processed").exists() and not (tmp_path / "metrics").exists()


def streamed_peak_bytes(params: dict, folder: Path, n_docs: int) -> tuple[int, int]:
    """(peak Python heap, characters) of a lazily generated general corpus of `n_docs` paragraphs going
    through the stage's streaming chain: cleaning, hash split into Arrow files, then packing each split."""
    cfg = params.preprocess
    words = "the a of river stone light green old house under over quietly ran saw".split()

    def paragraph(i: int) -> str:  # ~1 kB, every one different
        return " ".join(words[(i * 7 + j * j) % len(words)] for j in range(180)) + f" {i}."

    tokenizer = train_tokenizer((paragraph(i) for i in range(200)), cfg.vocab_size)
    folder.mkdir()
    tracemalloc.start()
    try:
        files, stats = spill_corpus("general", (paragraph(i) for i in range(n_docs)), DocumentFilter(cfg.min_chars),
                                    cfg, folder)
        for split, texts in files.items():
            pack(texts, tokenizer, cfg.block_size, "general", split, folder / f"{split}.blocks.arrow")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats["docs_out"] == n_docs
    return peak, sum(len(paragraph(i)) for i in range(n_docs))


@pytest.mark.slow  # preprocess on 3 and 12 MB of text
def test_lm_corpora_stream_through_preprocess_in_bounded_memory(tmp_path):
    """A corpus four times larger needs about the same memory, below its own size: the LM corpora never
    sit in memory whole (a batch of text and its token lists, and a digest per document, do)."""
    params = tiny_params(tmp_path)
    small, small_chars = streamed_peak_bytes(params, tmp_path / "small", 3_000)
    large, large_chars = streamed_peak_bytes(params, tmp_path / "large", 12_000)
    assert large_chars > 10_000_000
    assert large < 0.7 * large_chars, f"peak {large / 1e6:.1f} MB for {large_chars / 1e6:.1f} MB of text"
    assert large < 1.3 * small, f"peak {small / 1e6:.1f} MB -> {large / 1e6:.1f} MB for 4x the text"
