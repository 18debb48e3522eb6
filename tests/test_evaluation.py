"""Evaluation: metrics against independent references, and the stage end to end on a tiny layout."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from helpers import ROOT, SHARED, stage_main
from helpers import tiny_gpt2 as gpt2
from torch import nn
from transformers import GPT2LMHeadModel

import stages.evaluate as evaluate_module
from lmforge import paths, report
from lmforge.compose import compose
from lmforge.config import stage_params
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation import metrics

VOCAB = 100
LABEL_TOKENS = [7, 9]  # token ids of the label words " negative" / " positive"


def tiny_gpt2(n_layer: int = 2, seed: int = 0) -> GPT2LMHeadModel:
    return gpt2(seed, vocab_size=VOCAB, n_positions=64, n_layer=n_layer, pad_token_id=0)


def random_blocks(n: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=generator).tolist()


# --- perplexity ------------------------------------------------------------------------------------


def test_perplexity_equals_exp_of_hf_loss():
    model = tiny_gpt2()
    blocks = random_blocks(5, 16)
    ids = torch.tensor(blocks)
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    # Batches of 2 over 5 blocks: a per-batch mean of means would differ from HF's token mean.
    assert metrics.perplexity(model, blocks, batch_size=2) == pytest.approx(expected, rel=1e-5)
    dataset = Dataset.from_dict({"input_ids": blocks})
    assert metrics.perplexity(model, dataset, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_perplexity_of_uniform_model_is_vocab_size():
    model = tiny_gpt2()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to wte: every logit is 0, the distribution uniform
    assert metrics.perplexity(model, random_blocks(4, 16), batch_size=4) == pytest.approx(VOCAB, rel=1e-4)


# --- task accuracy ---------------------------------------------------------------------------------


class PreferToken(nn.Module):
    """A real GPT-2 whose logits get a large bonus on one token, so it always predicts that token."""

    def __init__(self, inner: nn.Module, token: int):
        super().__init__()
        self.inner, self.token = inner, token

    def forward(self, input_ids, attention_mask):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
        logits[..., self.token] += 1e4
        return SimpleNamespace(logits=logits)


class EchoLastToken(nn.Module):
    """At every position, predicts the token found there: the answer is the prompt's last token."""

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=F.one_hot(input_ids, VOCAB).float() * 10)


def test_task_accuracy_of_a_model_that_prefers_one_label_is_that_label_share():
    prompts = [random_blocks(1, 5 + i % 4, seed=i)[0] for i in range(10)]
    labels = [1, 1, 0, 1, 1, 0, 1, 1, 0, 1]  # 7 of 10 are label 1
    model = PreferToken(tiny_gpt2(), LABEL_TOKENS[1])
    assert metrics.task_accuracy(model, prompts, labels, LABEL_TOKENS, batch_size=4) == pytest.approx(0.7)
    model = PreferToken(tiny_gpt2(), LABEL_TOKENS[0])
    assert metrics.task_accuracy(model, prompts, labels, LABEL_TOKENS, batch_size=4) == pytest.approx(0.3)


def test_task_accuracy_reads_the_last_real_position_of_padded_prompts():
    # Prompts of different lengths in one batch: reading a padding position (token 0, equal scores
    # for both label tokens) instead of the last real token would predict label 0 for the short ones.
    prompts = [[3, 4, 9], [3, 4, 5, 6, 7, 7], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    labels = [1, 0, 1, 0]  # the last one ends in the wrong label's token
    accuracy = metrics.task_accuracy(EchoLastToken(), prompts, labels, LABEL_TOKENS, batch_size=4)
    assert accuracy == pytest.approx(0.75)


# --- parameter counts ------------------------------------------------------------------------------


def test_count_parameters_matches_hf_and_counts_pruned_zeros():
    model = tiny_gpt2()
    counts = metrics.count_parameters(model)
    assert counts["parameters"] == model.num_parameters()
    assert counts["non_embedding_parameters"] == model.num_parameters(exclude_embeddings=True)
    with torch.no_grad():
        weight = model.transformer.h[0].attn.c_attn.weight
        weight[:2, :5] = 0.0  # 10 random-init (non-zero) entries, pruned by hand
    pruned = metrics.count_parameters(model)
    assert pruned["parameters"] == counts["parameters"]
    assert pruned["nonzero_parameters"] == counts["nonzero_parameters"] - 10


def test_count_parameters_of_int8_gpt2_equals_its_fp32_source():
    model = tiny_gpt2()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert not isinstance(quantized.lm_head, nn.Linear)  # the (tied) lm_head is now packed int8
    assert metrics.count_parameters(quantized) == metrics.count_parameters(model)


def test_count_parameters_reads_packed_int8_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        for layer in (model[0], model[2]):  # magnitudes in [0.5, 1]: none rounds to int8 zero
            magnitude = 0.5 + torch.rand_like(layer.weight) / 2
            layer.weight.copy_(torch.sign(torch.randn_like(layer.weight)) * magnitude)
        model[0].weight[:3] = 0.0  # 48 zeros, pruned by hand
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    assert list(quantized.parameters()) == []  # so counting model.parameters() alone would give 0
    counts = metrics.count_parameters(quantized)
    assert counts == metrics.count_parameters(model)
    assert counts["parameters"] == 16 * 32 + 32 + 32 * 8 + 8
    assert counts["nonzero_parameters"] == counts["parameters"] - 48


# --- speed -----------------------------------------------------------------------------------------


def test_latency_and_throughput_are_positive_and_restore_threads():
    model = tiny_gpt2(n_layer=1)
    before = torch.get_num_threads()
    result = metrics.latency(model, seq_len=8, warmup=1, runs=7, vocab_size=VOCAB, threads=1)
    assert 0 < result["p50_ms"] <= result["p90_ms"]
    assert metrics.throughput(model, batch=2, seq_len=8, runs=2, vocab_size=VOCAB, threads=1) > 0
    assert torch.get_num_threads() == before


# --- the stage on a tiny artifact layout -----------------------------------------------------------


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """data/processed, models/{general,teacher,student,pruned}, metrics/preprocess.json, params.yaml."""
    monkeypatch.chdir(tmp_path)

    def lm_splits(seed: int) -> DatasetDict:
        return DatasetDict({split: Dataset.from_dict({"input_ids": random_blocks(10, 16, seed=seed + i)})
                            for i, split in enumerate(("train", "validation", "test"))})

    lm_splits(0).save_to_disk(str(paths.LM_GENERAL))
    lm_splits(10).save_to_disk(str(paths.LM_DOMAIN))
    prompts = [random_blocks(1, 6 + i % 5, seed=100 + i)[0] for i in range(40)]
    labels = [i % 2 for i in range(40)]
    task = Dataset.from_dict({"text": [f"review {i}" for i in range(40)], "label": labels,
                              "prompt_ids": prompts})
    # validation: the test items with every label flipped, so that a model's validation accuracy is 1 - its test one
    flipped = task.map(lambda row: {"label": 1 - row["label"]})
    DatasetDict({"train": task, "validation": flipped, "test": task}).save_to_disk(str(paths.TASK))
    paths.TASK_META.write_text(json.dumps({"prompt": " Sentiment:", "label_words": [" negative", " positive"],
                                           "label_token_ids": LABEL_TOKENS, "block_size": 16}))
    for name, n_layer, seed in (("general", 2, 0), ("teacher", 2, 1), ("student", 1, 2)):
        tiny_gpt2(n_layer, seed).save_pretrained(paths.model_dir(name))
    pruned = tiny_gpt2(1, 2)
    with torch.no_grad():
        for block in pruned.transformer.h:
            block.mlp.c_fc.weight.zero_()
    pruned.save_pretrained(paths.model_dir("pruned"))
    paths.METRICS.mkdir()
    (paths.METRICS / "preprocess.json").write_text(json.dumps({"bow_baseline_accuracy": 0.61,
                                                               "majority_accuracy": 0.5}))
    compose(tmp_path / "params.yaml", ["profile=tiny", "evaluate.models=[general,teacher,student,pruned]",
                                       "evaluate.precision=fp32"],  # auto may pick bf16: ppl compared to fp32 below
            conf_dir=ROOT / "conf")
    return tmp_path


def run_stage() -> None:
    """The evaluate stage, in this process, in the current directory."""
    stage_main("evaluate")()


def test_evaluate_stage_writes_metrics_plots_and_report(layout):
    run_stage()
    results = json.loads((layout / "metrics" / "evaluate.json").read_text())
    assert list(results["models"]) == ["general", "teacher", "student", "pruned"]
    teacher, student, pruned = (results["models"][n] for n in ("teacher", "student", "pruned"))
    assert teacher["accuracy_retention"] == teacher["speedup_p50"] == teacher["compression"] == 1.0
    assert student["parameters"] < teacher["parameters"]
    assert pruned["parameters"] == student["parameters"]
    assert pruned["nonzero_parameters"] == student["nonzero_parameters"] - 32 * 128
    assert pruned["bytes_on_disk"] == student["bytes_on_disk"] > 0
    # Perplexity on the first max_lm_blocks (8 of 10) test blocks, as computed directly.
    blocks = random_blocks(10, 16, seed=2)[:8]
    direct = metrics.perplexity(tiny_gpt2(2, 1), blocks, batch_size=8)
    assert teacher["ppl_general"] == pytest.approx(direct, abs=1e-3)
    assert results["data"] == {"lm_blocks_general": 8, "lm_blocks_domain": 8, "task_examples": 32,
                               "validation_examples": 32, "latency_seq_len": 16, "throughput_batch": 4}
    assert results["baselines"] == {"bag_of_words": {"accuracy": 0.61}, "majority": {"accuracy": 0.5}}
    assert results["environment"]["threads"] == 2
    assert results["environment"]["precision"]["precision"] == "fp32"
    # every accuracy with its bootstrap interval; every model but the teacher tested against it on the same items
    for name, row in results["models"].items():
        lo, hi = row["accuracy_ci95"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1
        # the validation split is measured on its own items (here: the test items, labels flipped)
        assert row["validation_accuracy"] == pytest.approx(1 - row["accuracy"], abs=2e-4)
        if name == "teacher":
            assert "vs_teacher" not in row
            continue
        vs = row["vs_teacher"]
        assert set(vs) == {"b", "c", "p_mcnemar", "diff", "diff_ci95", "within_noise"}
        assert vs["diff"] == pytest.approx(row["accuracy"] - teacher["accuracy"], abs=2e-4)
        assert vs["diff"] == pytest.approx((vs["b"] - vs["c"]) / 32, abs=1e-4)
        assert 0 < vs["p_mcnemar"] <= 1 and vs["within_noise"] == (vs["p_mcnemar"] >= 0.05)
        assert vs["diff_ci95"][0] <= vs["diff"] <= vs["diff_ci95"][1]
    assert "task_correct" not in (layout / "metrics" / "evaluate.json").read_text()  # no per-item lists
    assert {row["precision"] for row in results["models"].values()} == {"fp32"}

    records = json.loads((layout / "plots" / "pareto.json").read_text())
    assert [r["model"] for r in records] == ["general", "teacher", "student", "pruned"]
    assert set(records[0]) == {"model", "bytes", "mb", "accuracy", "latency_p50_ms", "ppl_domain"}

    headline = json.loads((layout / "metrics" / "headline.json").read_text())
    assert set(headline) == {"general", "teacher", "student", "pruned", "baseline_bag_of_words",
                             "baseline_majority", "recommended"}
    assert headline["student"]["mb"] == round(student["bytes_on_disk"] / 1e6, 4)
    assert headline["recommended"] == results["recommendation"]["model"]
    assert set(results["pareto"]) == {"size", "latency"}

    summary = (layout / "reports" / "summary.md").read_text()
    for text in ("| model | params |", "| pruned", "bag-of-words baseline", "majority class",
                 "unstructured sparsity", "## Recommended model", "| Pareto |", "## Environment",
                 "| accuracy [95% interval] | validation | vs teacher |", "| (reference) |", "McNemar",
                 "Validation: the accuracy on 32 validation examples"):
        assert text in summary
    assert (layout / "reports" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((layout / "reports").glob(".*"))  # no temporary files left behind


def test_missing_models_stop_before_any_work(layout, monkeypatch):
    shutil.rmtree(paths.model_dir("student"))
    shutil.rmtree(paths.model_dir("pruned"))
    loaded = []
    monkeypatch.setattr(evaluate_module, "load_model", lambda name, threads=None: loaded.append(name))
    with pytest.raises(DataError) as excinfo:
        run_stage()
    message = str(excinfo.value)
    assert "models/student (run `dvc repro distill`)" in message
    assert "models/pruned (run `dvc repro prune`)" in message
    assert loaded == []
    assert not (layout / "metrics" / "evaluate.json").exists()


def test_missing_data_names_preprocess(layout):
    shutil.rmtree(paths.LM_DOMAIN)
    with pytest.raises(DataError, match=r"data/processed/lm_domain \(run `dvc repro preprocess`\)"):
        run_stage()


def test_quantized_model_is_loaded_through_its_own_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    int8 = torch.ao.quantization.quantize_dynamic(tiny_gpt2(), {nn.Linear}, dtype=torch.qint8)
    calls = []
    fake = SimpleNamespace(load_quantized=lambda path, threads=None: calls.append(Path(path)) or int8)
    monkeypatch.setitem(sys.modules, "lmforge.compression.quantize", fake)
    folder = tmp_path / "models" / "quantized"  # what lmforge.modelio recognises as the int8 format
    folder.mkdir(parents=True)
    (folder / "quantization.json").write_text("{}")
    (folder / "model_int8.safetensors").write_bytes(b"")
    assert evaluate_module.load_model(paths.model_dir("quantized")) is int8
    assert calls == [Path("models/quantized")]


def test_unknown_model_name_is_a_config_error(layout):
    params = stage_params("evaluate", path=layout / "params.yaml")
    params.evaluate.models = ["teacher", "distilled"]
    with pytest.raises(ConfigError, match="'distilled'.*general, teacher, student, pruned, quantized"):
        evaluate_module.main(params)


def test_an_onnx_quantized_model_is_evaluated_through_onnx_runtime(layout):
    """quantize.method=onnx_int8: evaluate measures models/quantized as an ORT session, same metrics."""
    from lmforge.compression import quantize
    from lmforge.compression.onnx_int8 import OnnxModel
    from lmforge.config import QuantizeConfig

    cfg = QuantizeConfig(method="onnx_int8", per_channel=True, include_lm_head=True, min_coverage=0.95,
                         calibration_blocks=0, block_size=None, check_max_blocks=4, check_max_examples=4,
                         task_model=False, gate=None, candidates=None, max_accuracy_drop=0.01, smooth_alpha=0.5,
                         smooth_blocks=4, fallback_layers=4)
    pruned = GPT2LMHeadModel.from_pretrained(paths.model_dir("pruned"))
    with torch.no_grad():  # as after training: no two layer norms alike (the exporter merges equal constants)
        for p in pruned.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn_like(p))
    pruned.save_pretrained(paths.model_dir("pruned"))
    paths.model_dir("quantized").mkdir()
    quantize.quantize_to(pruned, paths.model_dir("quantized"), cfg)
    assert isinstance(evaluate_module.load_model(paths.model_dir("quantized"), threads=1), OnnxModel)
    compose(layout / "params.yaml", ["profile=tiny", "evaluate.models=[pruned,quantized]", "evaluate.precision=fp32"],
            conf_dir=ROOT / "conf")
    run_stage()
    models = json.loads((layout / "metrics" / "evaluate.json").read_text())["models"]
    fp32, int8 = models["pruned"], models["quantized"]
    assert int8["precision"] == "onnx_int8" and fp32["precision"] == "fp32"
    assert int8["parameters"] == fp32["parameters"]  # the tied embedding once: shared with the int8 head
    assert int8["non_embedding_parameters"] == fp32["non_embedding_parameters"]
    assert int8["bytes_on_disk"] < fp32["bytes_on_disk"]
    assert int8["ppl_general"] == pytest.approx(fp32["ppl_general"], rel=0.05)
    assert int8["latency_p50_ms"] > 0 and int8["tokens_per_s"] > 0


# --- Pareto frontier and the recommended model -------------------------------------------------------


def row(accuracy: float, mb: float, ms: float, ppl: float = 5.0) -> dict:
    return {"accuracy": accuracy, "bytes_on_disk": int(mb * 1e6), "latency_p50_ms": ms,
            "ppl_general": ppl, "ppl_domain": ppl}


def test_pareto_front_keeps_the_models_no_other_beats_on_both_axes():
    models = {"teacher": row(0.94, 3.8, 3.6), "student": row(0.96, 2.2, 2.1), "pruned": row(0.96, 2.2, 2.0),
              "quantized": row(0.95, 1.2, 2.1), "general": row(0.50, 3.8, 3.5)}
    # pruned ties student on accuracy and size: neither dominates the other on size
    assert report.pareto_front(models, "bytes_on_disk") == ["student", "pruned", "quantized"]
    assert report.pareto_front(models, "latency_p50_ms") == ["pruned"]


def test_the_recommended_model_is_the_fastest_inside_the_gate():
    gate = {"max_accuracy_drop": 0.02, "max_ppl_ratio": 1.1}
    models = {"teacher": row(0.94, 3.8, 3.6), "student": row(0.93, 2.2, 2.0),
              "pruned": row(0.90, 2.2, 1.0),  # fastest, but 0.04 below the teacher
              "quantized": row(0.95, 1.2, 1.5, ppl=5.6)}  # perplexity 1.12x the teacher's
    rec = report.recommend(models, gate)
    assert rec["model"] == "student"
    assert set(rec["failed"]) == {"pruned", "quantized"}
    assert "accuracy 0.900 < 0.920" in rec["failed"]["pruned"][0]
    assert "ppl_general" in rec["failed"]["quantized"][0]
    # latencies within 10% are noise: the smaller of the equally fast ones is named
    models["quantized"] = row(0.95, 1.2, 2.15)
    assert report.recommend(models, gate)["model"] == "quantized"
    assert report.recommend(models, {**gate, "max_accuracy_drop": 0.1})["model"] == "pruned"
    assert report.recommend({"student": row(0.9, 1, 1)}, gate)["model"] is None  # no teacher to compare with


# --- external test sets and the base model ---------------------------------------------------------

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "film", "movie", "plot", "acting", "the", "a", "was",
         "is", "not", "very", "Sentiment", ":", ".", ","]


def word_tokenizer() -> None:
    """data/processed/tokenizer: a word-level tokenizer whose ids fit the tiny models' 100-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[UNK]").save_pretrained(
        str(paths.TOKENIZER))


def seen_texts(texts: list[str]) -> None:
    """data/processed/text_digests.npy as preprocess writes it, for these training texts."""
    import numpy as np

    from lmforge.data.cleaning import overlap_key

    np.save(paths.TEXT_DIGESTS, np.unique(np.array([overlap_key(t) for t in texts], dtype=np.uint64)))


def external_spec(name: str, label_files: list[str], **corpus) -> dict:
    base = {"path": "text", "name": None, "files": [], "label_files": label_files, "splits": ["train"],
            "sample_by": "line", "encoding": "utf-8", "text_column": "text", "label_column": None,
            "label_values": [], "detokenize": "none"}
    return {"name": name, "source": "local", "max_examples": None, "corpus": base | corpus}


def with_external(layout: Path, specs: list[dict], *overrides: str) -> None:
    import yaml

    compose(layout / "params.yaml", ["profile=tiny", "evaluate.models=[teacher,student]", *overrides],
            conf_dir=ROOT / "conf")
    params = yaml.safe_load((layout / "params.yaml").read_text())
    params["evaluate"]["external"] = specs
    (layout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


FRESH = [f"the {a} was {b} ." for a in ("film", "movie", "plot", "acting") for b in ("good", "great", "bad", "dull")]


@pytest.fixture
def external_layout(layout):
    word_tokenizer()
    seen_texts(["the film was awful .", "a very fine movie .", "not good , not bad ."])
    (layout / "ext").mkdir()
    (layout / "ext" / "neg.txt").write_text("\n".join(FRESH[1::2] + ["The film was AWFUL!"]) + "\n")
    (layout / "ext" / "pos.txt").write_text("\n".join(FRESH[0::2] + ["a very fine movie", "", "the film was good ."])
                                            + "\n")
    return layout


def test_external_sets_are_measured_for_every_model_with_training_overlap_dropped(external_layout):
    with_external(external_layout, [external_spec("reviews", ["ext/neg.txt", "ext/pos.txt"])])
    run_stage()
    results = json.loads((external_layout / "metrics" / "evaluate.json").read_text())
    stats = results["external"]["reviews"]
    # 8 + 1 negative lines, 8 + 3 positive (one empty, one a duplicate); 2 seen in training, up to case and punctuation
    assert stats["overlap_with_training_dropped"] == 2
    assert stats["duplicates_removed"] == 1 and stats["empty_removed"] == 1
    assert stats["examples"] == 16 and stats["positive_fraction"] == 0.5
    for name in ("teacher", "student"):
        accuracy = results["models"][name]["external_accuracy"]["reviews"]
        lo, hi = results["models"][name]["external_accuracy_ci95"]["reviews"]
        assert 0.0 <= lo <= accuracy <= hi <= 1.0
    summary = (external_layout / "reports" / "summary.md").read_text()
    assert "accuracy reviews" in summary and "2 found in the training corpora and dropped" in summary


def test_external_set_mostly_seen_in_training_stops_before_any_model_is_loaded(external_layout, monkeypatch):
    (external_layout / "ext" / "seen-neg.txt").write_text("the film was awful .\nNot good, not bad!\n")
    (external_layout / "ext" / "seen-pos.txt").write_text("A very fine movie.\nthe film was good .\n")
    with_external(external_layout, [external_spec("copies", ["ext/seen-neg.txt", "ext/seen-pos.txt"])])
    loaded = []
    monkeypatch.setattr(evaluate_module, "load_model", lambda name: loaded.append(name))
    with pytest.raises(DataError, match=r"evaluate.external\[0\] \(copies\): 3 of its 4 texts \(75%\) occur in the "
                                        r"training corpora"):
        run_stage()
    assert loaded == [] and not (external_layout / "metrics" / "evaluate.json").exists()


@pytest.mark.parametrize("corpus, error", [
    ({"label_files": ["ext/missing-*.txt", "ext/pos.txt"]}, r"pattern 'ext/missing-\*.txt' matches no file"),
    ({"path": "csv", "label_files": [], "files": ["ext/set.csv"], "text_column": "review", "label_column": "label",
      "label_values": ["0", "1"]}, r"has no column 'review' \(columns found: text, label\)"),
    ({"path": "csv", "label_files": [], "files": ["ext/set.csv"], "label_column": "label",
      "label_values": ["0", "1"]}, r"label value 2 in column 'label' of ext/set.csv is not one of the label_values"),
    ({"label_files": ["ext/pos.txt"]}, r"1 labels \(label_files or label_values\) for the task's 2 label words"),
])
def test_bad_external_spec_fails_before_any_model_is_loaded(external_layout, monkeypatch, corpus, error):
    (external_layout / "ext" / "set.csv").write_text("text,label\nthe film was good .,1\nthe plot was dull .,2\n")
    with_external(external_layout, [external_spec("bad", corpus.pop("label_files", []), **corpus)])
    loaded = []
    monkeypatch.setattr(evaluate_module, "load_model", lambda name: loaded.append(name))
    with pytest.raises((DataError, ConfigError), match=error):
        run_stage()
    assert loaded == []


@pytest.mark.skipif(not (SHARED / "rt-polarity").is_dir(), reason="../shared/data/rt-polarity is not beside the repo")
def test_rt_polarity_from_shared_data_as_an_external_set(external_layout):
    files = [str(SHARED / "rt-polarity" / f"rt-polarity.{label}") for label in ("neg", "pos")]
    with_external(external_layout, [external_spec("rt_polarity", files) | {"max_examples": 40}])
    run_stage()
    results = json.loads((external_layout / "metrics" / "evaluate.json").read_text())
    stats = results["external"]["rt_polarity"]
    assert stats["rows_read"] == 40 and stats["examples"] == 40 and stats["positive_fraction"] == 0.5
    assert set(results["models"]["teacher"]["external_accuracy"]) == {"rt_polarity"}


def test_base_model_is_measured_first_when_the_chain_starts_from_a_pretrained_model(layout):
    tiny_gpt2(2, 5).save_pretrained(paths.model_dir("base"))
    compose(layout / "params.yaml", ["profile=tiny", "evaluate.models=[teacher,student]", "model.init=pretrained",
                                     "model.name_or_path=some/checkpoint"], conf_dir=ROOT / "conf")
    run_stage()
    results = json.loads((layout / "metrics" / "evaluate.json").read_text())
    assert list(results["models"]) == ["base", "teacher", "student"]
    assert "| base |" in (layout / "reports" / "summary.md").read_text()


def test_base_model_without_a_pretrained_chain_is_a_config_error(layout):
    compose(layout / "params.yaml", ["profile=tiny", "evaluate.models=[base,teacher]"], conf_dir=ROOT / "conf")
    with pytest.raises(ConfigError, match=r"'base' \(models/base holds weights only with model.init=pretrained"):
        run_stage()
