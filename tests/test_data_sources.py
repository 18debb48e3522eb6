"""data=local / data=hub: the loader for every file format, label mappings, the errors of bad input,
cleaning counts, leakage between corpora, the tokenizer from models/base, and profile=cpu_real on the
real files of ../shared/data when they are there."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from datasets import load_from_disk
from helpers import ROOT, SHARED
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from lmforge import paths
from lmforge.compose import compose
from lmforge.config import CorpusConfig, stage_params
from lmforge.data.cleaning import detokenize_wikitext, normalized_key
from lmforge.data.preprocess import check_leakage, clean_corpus
from lmforge.data.sources import load_corpus
from lmforge.errors import ConfigError, DataError
from stages.preprocess import main as preprocess

REVIEWS = ["a fine and moving film .", "dull , long and pointless .", "the best thing this year .",
           "i wanted my money back ."]
LABELS = [1, 0, 1, 0]


def corpus(**changes) -> CorpusConfig:
    """The task corpus of conf/data/local.yaml with some fields changed."""
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "local.yaml"))["task"]
    return dataclasses.replace(CorpusConfig(**raw), **changes)


# --------------------------------------------------------------------------------------------------
# Every format through datasets.load_dataset
# --------------------------------------------------------------------------------------------------


def test_text_one_document_per_line(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "b.txt").write_text("third line\n")
    texts, labels = load_corpus(corpus(files=[str(tmp_path / "*.txt")], label_files=[]), "data.general",
                                hub=False)
    assert texts == ["first line", "second line", "third line"] and labels == []


def test_text_one_document_per_file_and_per_paragraph(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "1.txt").write_text("one\ndocument\n\nstill the same file\n")
    (tmp_path / "docs" / "2.txt").write_text("another file\n")
    spec = corpus(files=[str(tmp_path / "docs" / "*.txt")], label_files=[], sample_by="document")
    texts, _ = load_corpus(spec, "data.general", hub=False)
    assert len(texts) == 2 and "still the same file" in texts[0]
    texts, _ = load_corpus(dataclasses.replace(spec, sample_by="paragraph"), "data.general", hub=False)
    assert len(texts) == 3 and texts[1].strip() == "still the same file"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_tabular_formats_with_column_and_label_mapping(tmp_path, fmt):
    frame = pd.DataFrame({"review": REVIEWS, "stars": ["pos" if y else "neg" for y in LABELS], "id": range(4)})
    path = tmp_path / f"part-0.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    frame.iloc[:1].assign(review="one more review .").to_csv(tmp_path / "extra.csv", index=False)
    spec = corpus(path=fmt, files=[str(tmp_path / f"part-*.{fmt}")], label_files=[], text_column="review",
                  label_column="stars", label_values=["neg", "pos"])
    texts, labels = load_corpus(spec, "data.task", hub=False, labelled=True)
    assert texts == REVIEWS and labels == LABELS
    # several globs; integer label values compared as text
    spec = dataclasses.replace(spec, label_column="id", label_values=["0", "1", "2", "3"])
    if fmt == "csv":
        spec.files.append(str(tmp_path / "extra.csv"))
    texts, labels = load_corpus(spec, "data.task", hub=False, labelled=True)
    assert labels[:4] == [0, 1, 2, 3] and len(texts) == (5 if fmt == "csv" else 4)


def test_file_per_label_and_a_limit_shared_between_labels(tmp_path):
    (tmp_path / "r.neg").write_text("bad one\nbad two\nbad three\n")
    (tmp_path / "r.pos").write_text("good one\ngood two\n")
    spec = corpus(label_files=[str(tmp_path / "r.neg"), str(tmp_path / "r.pos")])
    texts, labels = load_corpus(spec, "data.task", hub=False, labelled=True)
    assert list(zip(texts, labels, strict=True)) == [("bad one", 0), ("bad two", 0), ("bad three", 0),
                                                     ("good one", 1), ("good two", 1)]
    texts, labels = load_corpus(spec, "data.task", hub=False, limit=4, labelled=True)
    assert labels == [0, 0, 1, 1]  # a cap keeps both classes
    texts, _ = load_corpus(spec, "data.task", hub=False, limit=2, streaming=True, labelled=True)
    assert texts == ["bad one", "good one"]


def test_hub_path_is_the_same_loader(tmp_path):
    """data=hub offline: a builder name stands in for a dataset name, with its own files."""
    pd.DataFrame({"text": REVIEWS, "label": LABELS}).to_csv(tmp_path / "train.csv", index=False)
    spec = corpus(path="csv", files=[str(tmp_path / "train.csv")], label_files=[], label_column="label",
                  label_values=["0", "1"], splits=["train"])
    assert load_corpus(spec, "data.task", hub=True, labelled=True) == (REVIEWS, LABELS)


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file, column, value or pattern
# --------------------------------------------------------------------------------------------------


def test_wrong_columns_names_file_column_and_columns_found(tmp_path):
    pd.DataFrame({"body": REVIEWS, "label": LABELS}).to_csv(tmp_path / "reviews.csv", index=False)
    spec = corpus(path="csv", files=[str(tmp_path / "reviews.csv")], label_files=[], label_column="label",
                  label_values=["0", "1"])
    with pytest.raises(DataError, match=r"reviews\.csv has no column 'text' \(columns found: body, label\)"):
        load_corpus(spec, "data.task", hub=False, labelled=True)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "good.parquet").write_bytes(b"")
    pd.DataFrame({"text": REVIEWS}).to_parquet(tmp_path / "good.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet at all")
    spec = corpus(path="parquet", files=[str(tmp_path / "*.parquet")], label_files=[])
    with pytest.raises(DataError, match=r"data.general: cannot read .*broken\.parquet as parquet"):
        load_corpus(spec, "data.general", hub=False)


def test_label_value_outside_the_mapping(tmp_path):
    pd.DataFrame({"text": REVIEWS, "label": [0, 1, 2, 1]}).to_json(tmp_path / "r.jsonl", orient="records",
                                                                   lines=True)
    spec = corpus(path="jsonl", files=[str(tmp_path / "r.jsonl")], label_files=[], label_column="label",
                  label_values=["0", "1"])
    with pytest.raises(DataError, match=r"label value 2 in column 'label' of .*r\.jsonl is not one of the "
                                        r"label_values \['0', '1'\]"):
        load_corpus(spec, "data.task", hub=False, labelled=True)


def test_glob_matching_nothing_names_the_pattern(tmp_path):
    spec = corpus(label_files=[str(tmp_path / "missing" / "*.neg"), str(tmp_path / "x.pos")])
    with pytest.raises(DataError, match=r"the pattern '.*missing/\*\.neg' matches no file"):
        load_corpus(spec, "data.task", hub=False, labelled=True)


def test_file_settings_are_refused_with_synthetic(tmp_path):
    compose(output=tmp_path / "params.yaml", overrides=["profile=tiny", "data.domain_from_task=0.3"],
            conf_dir=ROOT / "conf")
    with pytest.raises(ConfigError, match=r"'data.domain_from_task': 0.3 \(expected null with data.source=synthetic"):
        preprocess(stage_params("data", "preprocess", path=tmp_path / "params.yaml"))  # refused by validation


def test_labelled_corpus_needs_a_label_source():
    with pytest.raises(ConfigError, match="needs label_files .* or label_column and label_values"):
        load_corpus(corpus(files=["x"], label_files=[]), "data.task", hub=False, labelled=True)


def local_params(directory: Path, data: dict, **preprocess) -> dict:
    """params of profile=tiny with data=local and the given data / preprocess values."""
    compose(output=directory / "params.yaml", overrides=["profile=tiny", "data=local"], conf_dir=ROOT / "conf")
    params = OmegaConf.load(directory / "params.yaml")
    params.data = OmegaConf.merge(params.data, data)
    for key, value in preprocess.items():
        params.preprocess[key] = value
    OmegaConf.save(params, directory / "params.yaml")
    return stage_params("data", "preprocess", path=directory / "params.yaml")


def small_real_layout(directory: Path, n: int = 300) -> None:
    """data/raw laid out as conf/data/local.yaml expects, with made-up text."""
    (directory / "data/raw/tinyshakespeare").mkdir(parents=True)
    (directory / "data/raw/rt-polarity").mkdir(parents=True)
    (directory / "data/raw/tinyshakespeare/input.txt").write_text(
        "\n\n".join(f"Speaker {i}:\nThis is speech number {i} of the play, said aloud." for i in range(n)))
    for label in ("neg", "pos"):
        (directory / f"data/raw/rt-polarity/rt-polarity.{label}").write_text(
            "\n".join(f"review {i} is a {label} one , they say ." for i in range(n)) + "\n")


def test_bad_input_leaves_data_processed_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_real_layout(tmp_path)
    sentinel = paths.PROCESSED / "sentinel.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("previous run")
    params = local_params(tmp_path, {"task": {"label_files": ["data/raw/rt-polarity/*.neg",
                                                             "data/raw/rt-polarity/*.typo"]}})
    with pytest.raises(DataError, match=r"'data/raw/rt-polarity/\*\.typo' matches no file"):
        preprocess(params)
    assert [p.name for p in paths.PROCESSED.iterdir()] == ["sentinel.txt"]


# --------------------------------------------------------------------------------------------------
# Cleaning counts and leakage
# --------------------------------------------------------------------------------------------------


def test_cleaning_counts_detokenisation_normalised_duplicates_and_lengths():
    docs = ["the well @-@ known film , 1 @,@ 000 times .",   # detokenised
            "The well-known film, 1,000 times!",             # a normalised duplicate of the first
            "the well-known film, 1,000 times.",             # an exact duplicate of the first, detokenised
            "short",                                         # too short
            "x" * 500,                                       # too long
            "a <br />perfectly ordinary review ."]           # cleaned
    kept, stats = clean_corpus("task", docs, min_chars=10, max_chars=100, dedupe_mode="normalized",
                               detokenize="wikitext")
    assert [text for _, text in kept] == ["the well-known film, 1,000 times.", "a perfectly ordinary review."]
    assert stats == {"docs_in": 6, "detokenized": 2, "changed_by_cleaning": 1, "duplicates_removed": 1,
                     "normalized_duplicates_removed": 1, "too_short_removed": 1, "too_long_removed": 1,
                     "docs_out": 2}
    _, exact = clean_corpus("task", docs, min_chars=10, dedupe_mode="exact", detokenize="wikitext")
    assert exact["normalized_duplicates_removed"] == 0 and exact["docs_out"] == 4


def test_wikitext_detokeniser():
    assert detokenize_wikitext(" = = Plot = = \n He said \" do n't \" ( 3 @.@ 5 % ) ; it 's over .") == \
        " == Plot == \n He said \"don't\" (3.5%); it's over."
    assert normalized_key("The  END, it’s…") == normalized_key("the end it s")


def test_leakage_between_corpora_and_splits_is_refused():
    def clean():
        return {name: {"train": [f"{name} a"], "validation": [f"{name} b"], "test": [f"{name} c"]}
                for name in ("general", "domain", "task")}
    assert not any(check_leakage(clean(), key=normalized_key, disjoint_task_domain=True).values())
    planted = clean()
    planted["domain"]["train"].append("General C!")  # general test text, in domain training data
    with pytest.raises(DataError, match="general test in domain train: 1"):
        check_leakage(planted, key=normalized_key)
    assert not any(check_leakage(planted).values())  # exact comparison does not see it
    planted = clean()
    planted["general"]["train"].append("general b")  # between splits of one corpus
    with pytest.raises(DataError, match="general validation in train: 1"):
        check_leakage(planted)
    planted = clean()
    planted["task"]["train"].append("domain a")  # a carved-out domain review kept as a task example
    with pytest.raises(DataError, match="task in domain: 1"):
        check_leakage(planted, disjoint_task_domain=True)


def test_local_preprocess_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_real_layout(tmp_path)
    metrics = preprocess(local_params(tmp_path, {}))  # profile=tiny caps: 200 general, 300 task
    assert metrics["sources"]["general"]["docs_out"] == 200
    task, domain = metrics["sources"]["task"], metrics["sources"]["domain"]
    assert task["docs_in"] == 300 and task["moved_to_domain"] == domain["docs_out"] > 0
    assert task["docs_out"] + domain["docs_out"] == 300
    for split in ("train", "validation", "test"):
        assert 0.3 < metrics["task"][split]["positive_fraction"] < 0.7  # the cap kept both labels
    assert metrics["leakage"]["task_in_domain"] == 0 and not any(metrics["leakage"].values())
    task_texts = {t for ds in load_from_disk(paths.TASK).values() for t in ds["text"]}
    assert len(task_texts) == task["docs_out"]


# --------------------------------------------------------------------------------------------------
# The tokenizer of a pretrained checkpoint (models/base)
# --------------------------------------------------------------------------------------------------


def test_tokenizer_base_requires_models_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_real_layout(tmp_path)
    with pytest.raises(DataError, match=r"no tokenizer in models/base .* run the base stage first"):
        preprocess(local_params(tmp_path, {}, tokenizer="base"))
    assert not paths.PROCESSED.exists()


@pytest.mark.skipif(not (SHARED / "gpt2-bpe").is_dir(), reason=f"no GPT-2 tokenizer in {SHARED}")
def test_tokenizer_base_is_reused_with_a_pad_token(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_real_layout(tmp_path)
    shutil.copytree(SHARED / "gpt2-bpe", tmp_path / "models" / "base")
    metrics = preprocess(local_params(tmp_path, {}, tokenizer="base"))
    tokenizer = AutoTokenizer.from_pretrained(paths.TOKENIZER)
    assert len(tokenizer) == metrics["vocab_size"] == 50257
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert metrics["label_token_ids"] == [tokenizer.encode(" negative")[0], tokenizer.encode(" positive")[0]]


# --------------------------------------------------------------------------------------------------
# profile=cpu_real on the real files
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "rt-polarity").is_dir(), reason=f"no real data in {SHARED}")
def test_rt_polarity_file_per_label():
    spec = corpus(label_files=[str(SHARED / "rt-polarity/rt-polarity.neg"),
                               str(SHARED / "rt-polarity/rt-polarity.pos")])
    texts, labels = load_corpus(spec, "data.task", hub=False, labelled=True)
    assert len(texts) == 10662 and labels.count(0) == labels.count(1) == 5331
    assert texts[5331].startswith("the rock is destined")


@pytest.mark.skipif(not (SHARED / "tinyshakespeare").is_dir() or not (SHARED / "rt-polarity").is_dir(),
                    reason=f"no real data in {SHARED}")
def test_cpu_real_profile_preprocess(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compose(output=tmp_path / "params.yaml", overrides=["profile=cpu_real"], conf_dir=ROOT / "conf")
    params = OmegaConf.load(tmp_path / "params.yaml")
    assert params.data.source == "local"
    (tmp_path / "data" / "raw").mkdir(parents=True)
    for name in ("tinyshakespeare", "rt-polarity"):
        (tmp_path / "data" / "raw" / name).symlink_to(SHARED / name)
    params.data.general_docs, params.data.task_examples = 1500, 3000  # a quicker run, same code
    OmegaConf.save(params, tmp_path / "params.yaml")
    metrics = preprocess(stage_params("data", "preprocess", path=tmp_path / "params.yaml"))
    assert metrics["sources"]["general"]["docs_in"] == 1500
    assert metrics["sources"]["task"]["docs_in"] == 3000
    assert not any(metrics["leakage"].values()) and "task_in_domain" in metrics["leakage"]
    assert 0.4 < metrics["task"]["test"]["positive_fraction"] < 0.6
    assert metrics["task"]["truncated"] == 0  # every review fits block_size
    json.dumps(metrics)


@pytest.mark.skipif(not (SHARED / "wikitext-2").is_dir(), reason=f"no WikiText-2 in {SHARED}")
def test_wikitext_detokenised_through_the_cleaning():
    spec = corpus(files=[str(SHARED / "wikitext-2/wiki.valid.tokens")], label_files=[], detokenize="wikitext")
    texts, _ = load_corpus(spec, "data.general", hub=False)
    assert len(texts) == 3760  # one document per line, blank lines included
    kept, stats = clean_corpus("general", texts, min_chars=20, dedupe_mode="normalized", detokenize="wikitext")
    assert stats["detokenized"] > 1000 and stats["too_short_removed"] > 100  # short headings
    cleaned = [text for _, text in kept]
    assert not any(" @-@ " in t or " @,@ " in t or " , " in t for t in cleaned)
    assert any("-" in t for t in cleaned)
    assert sum(t.count("<unk>") for t in cleaned) > 1000  # a word of WikiText, not an HTML tag
