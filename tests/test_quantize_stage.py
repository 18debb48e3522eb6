"""The quantize stage (stages/quantize.py) for every method, on params composed from the real conf/:
coverage check, atomic swap, validation loss / accuracy against the input, the task-only model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from helpers import ROOT, library_noise, run_stage, stage_main, tiny_gpt2
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from lmforge import paths
from lmforge.compose import compose
from lmforge.compression.prune import l1_unstructured, make_permanent
from lmforge.compression.quantize import MANIFEST_FILE, QuantizationError, load_quantized
from lmforge.errors import ConfigError
from lmforge.evaluation import metrics
from lmforge.evaluation.gate import GateError

VOCAB = 300
LABEL_IDS = [5, 6]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def write_processed(generator: torch.Generator) -> None:
    """The parts of data/processed that quantize reads: domain LM blocks, task validation, task_meta.json."""
    def blocks(n: int) -> list[list[int]]:
        return torch.randint(1, VOCAB, (n, 16), generator=generator).tolist()

    DatasetDict({"train": Dataset.from_dict({"input_ids": blocks(8)}),
                 "validation": Dataset.from_dict({"input_ids": blocks(6)})}).save_to_disk(str(paths.LM_DOMAIN))
    lengths = torch.randint(4, 20, (24,), generator=generator).tolist()
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    labels = torch.randint(0, 2, (24,), generator=generator).tolist()
    DatasetDict({"validation": Dataset.from_dict({"prompt_ids": prompts, "label": labels})}).save_to_disk(
        str(paths.TASK))
    paths.TASK_META.write_text(json.dumps({"prompt": " Sentiment:", "label_words": [" negative", " positive"],
                                           "label_token_ids": LABEL_IDS, "block_size": 16}))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A repository root with models/pruned (a pruned tiny GPT-2 and its tokenizer) and data/processed."""
    monkeypatch.chdir(tmp_path)
    model = tiny_gpt2(vocab_size=VOCAB)
    l1_unstructured(model, 0.5)
    make_permanent(model)
    model.save_pretrained(paths.model_dir("pruned"))
    tiny_tokenizer().save_pretrained(paths.model_dir("pruned"))
    tiny_tokenizer().save_pretrained(paths.TOKENIZER)  # data/processed's: the pruned model reads the same ids
    write_processed(torch.Generator().manual_seed(1))
    return tmp_path


def quantize_here(*overrides: str, gate: bool = False) -> dict:
    """The quantize stage run in this process on the default profile with `overrides`; its metrics."""
    # the gate needs a teacher and more of data/processed: only its own tests build them
    compose("params.yaml", list(overrides) if gate else ["quantize.gate=null", *overrides], conf_dir=ROOT / "conf")
    stage_main("quantize")()
    return json.loads((paths.METRICS / "quantize.json").read_text())


def assert_no_pickle(target: Path) -> None:
    found = {p.suffix for p in target.rglob("*") if p.is_file()}
    assert not found & {".bin", ".pt", ".pth", ".pkl", ".pickle"}


def test_dynamic_int8_stage_writes_a_loadable_int8_model(workdir):
    metrics = quantize_here("quantize=dynamic_int8")
    target = paths.model_dir("quantized")
    assert metrics["method"] == "dynamic_int8"
    assert metrics["coverage"] == 1.0 and metrics["int8_params"] == metrics["linear_params"]
    assert metrics["weights_bytes"] < 0.75 * metrics["input_weights_bytes"]
    # measured against the unquantized input on validation data
    assert abs(metrics["val_loss_delta"]) < 0.05 and metrics["val_examples"] == 24
    assert metrics["val_loss"] == pytest.approx(metrics["input_val_loss"] + metrics["val_loss_delta"], abs=1e-3)
    assert_no_pickle(target)
    assert (target / "tokenizer.json").is_file()
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    assert manifest["method"] == "dynamic_int8" and manifest["per_channel"] is True
    assert isinstance(load_quantized(target).transformer.h[0].attn.c_attn, DynamicQuantizedLinear)
    assert sorted(p.name for p in paths.MODELS.iterdir()) == ["pruned", "quantized"]


@pytest.mark.slow  # the stage in a process of its own
def test_onnx_int8_stage_writes_an_ort_model_and_its_task_model_and_a_clean_log(workdir):
    # in a process of its own, as DVC runs it, to see its log: lmforge's lines, none of the exporter's and ORT's
    # warnings (profile=tiny: the default profile's quantize section without the gate)
    result = run_stage(workdir, "quantize")  # the default method
    assert result.returncode == 0, result.stderr[-3000:]
    assert library_noise(result.stderr) == []
    assert "INFO lmforge: wrote metrics/quantize.json" in result.stderr
    metrics = json.loads((paths.METRICS / "quantize.json").read_text())
    target = paths.model_dir("quantized")
    assert metrics["method"] == "onnx_int8" and metrics["coverage"] >= 0.95
    assert {p.name for p in target.iterdir()} >= {"model.onnx", "task.onnx", "config.json", MANIFEST_FILE,
                                                  "tokenizer.json"}
    assert not list(target.glob("*.tmp"))
    # int8 weights, one shared int8 embedding, and the graph itself: ~70 kB, half of this 36k-parameter model
    assert metrics["bytes_ratio"] < 0.6 and metrics["task_model_bytes"] > 0
    assert abs(metrics["val_loss_delta"]) < 0.05
    assert metrics["task_agreement_with_full"] == 1.0 and metrics["task_ms_per_review"] > 0
    assert_no_pickle(target)
    model = load_quantized(target, threads=1)
    ids = torch.randint(0, VOCAB, (2, 12))
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 12, VOCAB)


def test_bf16_stage_stores_bf16_weights(workdir):
    metrics = quantize_here("quantize=bf16")
    target = paths.model_dir("quantized")
    assert metrics["method"] == "bf16" and metrics["coverage"] == 1.0
    assert 0.45 < metrics["bytes_ratio"] < 0.55
    assert abs(metrics["val_loss_delta"]) < 0.05
    model = load_quantized(target)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_coverage_below_minimum_fails_and_leaves_the_previous_model(workdir):
    previous = paths.model_dir("quantized")
    previous.mkdir(parents=True)
    (previous / "marker.txt").write_text("previous run")

    with pytest.raises(QuantizationError) as error:
        quantize_here("quantize=dynamic_int8", "quantize.include_lm_head=false")  # min_coverage 0.95 in conf/
    message = str(error.value)
    assert "0.7191" in message and "0.9500" in message
    assert os.listdir(previous) == ["marker.txt"]
    assert sorted(p.name for p in paths.MODELS.iterdir()) == ["pruned", "quantized"]  # no temporary left
    assert not (paths.METRICS / "quantize.json").exists()


def test_static_calibration_is_refused_for_torch_methods(workdir):
    with pytest.raises(ConfigError, match="calibration_blocks"):
        quantize_here("quantize=dynamic_int8", "quantize.calibration_blocks=4")
    assert not paths.model_dir("quantized").exists()


@pytest.mark.parametrize("method", ["dynamic_int8", "bf16"])
def test_torch_task_model_agrees_with_the_full_quantized_model(workdir, method):
    metrics = quantize_here(f"quantize={method}", "quantize.task_model=true")
    # the full model's int8 head quantizes its input per call, the task model's label rows do not: a near-tie
    # may flip; bf16 computes both the same way
    assert metrics["task_agreement_with_full"] >= (0.9 if method == "dynamic_int8" else 1.0)
    assert metrics["task_ms_per_review"] > 0 and metrics["full_ms_per_review"] > 0
    assert not (paths.model_dir("quantized") / "task.onnx").exists()


def gate_inputs() -> float:
    """models/teacher (another tiny GPT-2) and general validation blocks; the task's labels become the teacher's own
    predictions, so the teacher is right on every example and the quantized model (a different one) is not.
    Returns the teacher's validation accuracy."""
    from lmforge.data.processed import validation_data

    teacher = tiny_gpt2(7, vocab_size=VOCAB)
    teacher.save_pretrained(paths.model_dir("teacher"))
    blocks = torch.randint(1, VOCAB, (6, 16), generator=torch.Generator().manual_seed(3)).tolist()
    DatasetDict({"validation": Dataset.from_dict({"input_ids": blocks})}).save_to_disk(str(paths.LM_GENERAL))
    task = DatasetDict.load_from_disk(str(paths.TASK))["validation"]
    with torch.no_grad():
        best = metrics.label_log_probs(teacher, list(task["prompt_ids"]), LABEL_IDS, 8).argmax(dim=-1).tolist()
    DatasetDict({"validation": Dataset.from_dict({"prompt_ids": task["prompt_ids"], "label": best})}).save_to_disk(
        str(paths.TASK) + ".new")
    shutil.rmtree(paths.TASK)
    Path(str(paths.TASK) + ".new").rename(paths.TASK)
    return metrics.measure(teacher, validation_data(256))["accuracy"]


def test_the_quantize_gate_passes_within_its_limit_and_a_failing_one_keeps_the_previous_model(workdir):
    assert gate_inputs() == 1.0
    metrics_ = quantize_here("quantize=dynamic_int8", "quantize.gate.max_accuracy_drop=1.0", gate=True)
    assert metrics_["gate"]["enabled"] and metrics_["gate"]["passed"] and metrics_["gate"]["teacher"]["accuracy"] == 1.0
    before = sorted((p.name, p.read_bytes()) for p in paths.model_dir("quantized").iterdir() if p.is_file())
    with pytest.raises(GateError, match=r"quantize gate failed: validation accuracy .* below the teacher's 1.0000 "
                                        r"\(allowed drop quantize.gate.max_accuracy_drop = 0.05\)"):
        quantize_here("quantize=dynamic_int8", gate=True)  # conf/: at most 0.05 below the teacher
    after = sorted((p.name, p.read_bytes()) for p in paths.model_dir("quantized").iterdir() if p.is_file())
    assert after == before  # the previous model is left as it was


@pytest.mark.parametrize("method", ["dynamic_int8", "bf16", "onnx_int8"])
def test_a_low_rank_pruned_model_is_quantized(workdir, method):
    """prune=lowrank writes models/pruned as factors (lowrank.json); quantize loads it through the one loader
    (lmforge.modeling.io) and quantizes the factored model like any other."""
    from lmforge.compression import lowrank

    source = paths.model_dir("pruned")
    model = GPT2LMHeadModel.from_pretrained(source)
    lowrank.lowrank(model, None, rank_ratio=0.25, energy=None, activation_aware=False)
    assert lowrank.factored_layers(model)
    shutil.rmtree(source)
    lowrank.save_lowrank(model, source, manifest={"method": ["lowrank"], "activation_aware": False})
    tiny_tokenizer().save_pretrained(source)

    metrics_ = quantize_here(f"quantize={method}")
    assert metrics_["method"] == method and metrics_["coverage"] >= 0.95
    assert abs(metrics_["val_loss_delta"]) < 0.05
    quantized = load_quantized(paths.model_dir("quantized"), threads=1)
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        got = torch.as_tensor(quantized(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).float()
    assert got.shape == (2, 12, VOCAB)
    # the factors themselves, quantized: far closer than a model whose factored layers were lost
    assert (got - expected).abs().mean() < 0.1 * expected.abs().mean()


def test_candidates_are_each_measured_and_the_fastest_accurate_one_is_kept(workdir):
    """quantize.candidates: every variant built and measured (accuracy, loss, ms, bytes), one chosen by the rule,
    recorded in the metrics and in the folder's quantization.json, with the int8 weight bits and why."""
    metrics = quantize_here("quantize.candidates=[per_channel,smooth,blockwise,fp32_fallback]",
                            "quantize.smooth_blocks=4", "quantize.fallback_layers=2")
    records = metrics["candidates"]
    assert set(records) == {"per_channel", "smooth", "blockwise", "fp32_fallback"}
    assert [name for name, r in records.items() if r["chosen"]] == [metrics["chosen_candidate"]]
    for record in records.values():
        assert {"val_accuracy", "val_loss", "ms_per_review", "weights_bytes", "qualified"} <= set(record)
        assert record["ms_per_review"] > 0 and record["weights_bytes"] > 0
    chosen = records[metrics["chosen_candidate"]]
    assert chosen["val_accuracy"] == metrics["val_accuracy"]
    if any(r["qualified"] for r in records.values()):  # the fastest of the qualified
        assert chosen["ms_per_review"] == min(r["ms_per_review"] for r in records.values() if r["qualified"])
    else:
        assert "most accurate" in metrics["choice"]
    manifest = json.loads((paths.model_dir("quantized") / MANIFEST_FILE).read_text())
    assert manifest["candidate"] == metrics["chosen_candidate"]
    assert metrics["int8_weights"]["reason"]
    assert (paths.model_dir("quantized") / "task.onnx").is_file() and metrics["task_agreement_with_full"] == 1.0
    assert not [p for p in paths.model_dir("quantized").iterdir() if p.is_dir()]  # one candidate's files only


def test_without_candidates_one_model_is_built_as_before(workdir):
    metrics = quantize_here("quantize.candidates=null")
    assert "candidates" not in metrics and metrics["coverage"] >= 0.95
