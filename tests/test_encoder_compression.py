"""Prune and quantize on BERT encoders and on classifiers (`*ForSequenceClassification`): the blocks shrink or
go int8, the heads outside the blocks are never pruned, and every folder loads back as the class it came from."""

from __future__ import annotations

import json

import pytest
import torch
from test_compression_methods import prune_config  # the same PruneConfig the prune tests build
from torch import nn
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from lmforge.compression import lowrank, methods, onnx_int8, structured, task_head
from lmforge.compression.calibration import calibrate
from lmforge.compression.linear import linear_layers
from lmforge.compression.prune import l1_unstructured, make_permanent, sparsity_report
from lmforge.compression.quantize import load_quantized, quantize_to
from lmforge.config import QuantizeConfig
from lmforge.errors import ConfigError
from lmforge.modeling.arch import blocks_of
from lmforge.modeling.family import auto_class

VOCAB, LABELS = 120, 2
BERT_TYPES = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"}
# what each class has outside its blocks: never pruned, may be quantized
HEADS = {"bert_classifier": {"bert.pooler.dense", "classifier"}, "gpt2_classifier": {"score"},
         "llama_classifier": {"score"}, "bert_mlm": {"cls.predictions.transform.dense", "cls.predictions.decoder"}}
INT8_REL = 0.05  # int8 vs fp32: max |diff| below 5% of the largest |logit| (as tests/test_onnx_int8.py)


def _trained_look(model: nn.Module) -> nn.Module:
    """No two layer norms or biases alike (the ONNX exporter merges equal constants), and a classifier head
    that separates the labels by more than int8 noise, as after training."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn_like(p))
            if name.startswith(("classifier.", "score.")):
                p.mul_(25)
    return model.eval()


def bert_config(n_layer: int = 2) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layer, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=LABELS)


def bert_classifier(n_layer: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return _trained_look(BertForSequenceClassification(bert_config(n_layer)))


def bert_mlm(n_layer: int = 2, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return _trained_look(BertForMaskedLM(bert_config(n_layer)))


def gpt2_classifier(n_layer: int = 2, seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=n_layer, n_head=4, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, num_labels=LABELS)
    return _trained_look(GPT2ForSequenceClassification(config))


def llama_classifier(n_layer: int = 2, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         num_labels=LABELS)
    return _trained_look(LlamaForSequenceClassification(config))


MODELS = {"bert_classifier": bert_classifier, "bert_mlm": bert_mlm, "gpt2_classifier": gpt2_classifier,
          "llama_classifier": llama_classifier}
CLASSIFIERS = ("bert_classifier", "gpt2_classifier", "llama_classifier")


def tokens(n: int = 8, seq: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))  # 0 is GPT-2's pad


def padded(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows of different lengths (pad id 0), and their attention mask."""
    ids = tokens(6, 16, seed)
    mask = torch.ones_like(ids)
    for row, length in enumerate((16, 9, 12, 4, 16, 7)):
        ids[row, length:], mask[row, length:] = 0, 0
    return ids, mask


def logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else mask).logits.float()


def head_state(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().clone() for name in HEADS[kind]
            for key, value in model.get_submodule(name).state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Blocks, heads and calibration
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_block_linears_are_the_layers_and_the_heads_are_outside(kind):
    model = MODELS[kind]()
    blocks = linear_layers(model, blocks_only=True)
    everything = linear_layers(model, blocks_only=False)
    assert set(everything) - set(blocks) == HEADS[kind]
    if kind.startswith("bert"):
        assert {name.split(".", 4)[4] for name in blocks} == BERT_TYPES and len(blocks) == 2 * len(BERT_TYPES)


@pytest.mark.parametrize("kind", MODELS)
def test_calibration_measures_every_block_of_encoders_and_classifiers(kind):
    model = MODELS[kind](n_layer=3)
    calib = calibrate(model, tokens(), batch_size=4)
    assert len(calib.block_influence) == len(blocks_of(model)) == 3
    assert all(0 < b < 2 for b in calib.block_influence)
    assert set(calib.input_sq) == set(linear_layers(model, blocks_only=True))
    assert calib.tokens == tokens().numel()
    assert all(bool((v > 0).all()) for v in calib.input_sq.values())


# --------------------------------------------------------------------------------------------------
# Structured pruning
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_structured_removing_nothing_gives_the_same_logits_and_class(kind):
    model = MODELS[kind]()
    pruned, _ = structured.structured(model, calibrate(model, tokens(), 4), None, 0.0, 0.0)
    assert type(pruned) is type(model)
    ids, mask = padded()
    assert torch.allclose(logits(pruned, ids, mask), logits(model, ids, mask), atol=1e-6)


def test_structured_bert_width_equals_the_dense_model_with_those_channels_zeroed():
    model = bert_classifier()
    pruned, report = structured.structured(model, calibrate(model, tokens(), 4), None, 0.5, None)
    assert report["ffn_channels"] == {"before": 64, "after": 32}
    reference = bert_classifier()
    with torch.no_grad():
        for block, small in zip(blocks_of(reference), blocks_of(pruned), strict=True):
            down, small_down = block.output.dense.weight, small.output.dense.weight  # (hidden, ffn)
            kept = [j for j in range(64) if any(torch.equal(down[:, j], small_down[:, k]) for k in range(32))]
            assert len(kept) == 32
            dropped = torch.ones(64, dtype=torch.bool)
            dropped[kept] = False
            down[:, dropped] = 0
    ids, mask = padded()
    assert torch.allclose(logits(pruned, ids, mask), logits(reference, ids, mask), atol=1e-5)


def test_structured_bert_classifier_shrinks_saves_and_reloads_as_a_classifier(tmp_path):
    model = bert_classifier(n_layer=4)
    calib = calibrate(model, tokens(), 4)
    pruned, report = structured.structured(model, calib, None, 0.5, 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert (pruned.config.intermediate_size, pruned.config.num_hidden_layers) == (32, 2)
    assert report["layers"]["kept"] == sorted(sorted(range(4), key=lambda i: -calib.block_influence[i])[:2])
    kept_head = head_state(pruned, "bert_classifier")
    for key, value in head_state(model, "bert_classifier").items():  # the pooler and classifier, untouched
        assert torch.equal(kept_head[key], value), key
    pruned.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.architectures == ["BertForSequenceClassification"]
    reloaded = auto_class(config).from_pretrained(tmp_path).eval()
    assert type(reloaded) is BertForSequenceClassification
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == shapes
    ids, mask = padded()
    assert logits(reloaded, ids, mask).shape == (6, LABELS)
    assert torch.equal(logits(reloaded, ids, mask), logits(pruned, ids, mask))


@pytest.mark.parametrize("kind", ["bert_mlm", "gpt2_classifier", "llama_classifier"])
def test_structured_other_kinds_reload_as_their_own_class(kind, tmp_path):
    model = MODELS[kind](n_layer=3)
    heads = 0.5 if kind == "llama_classifier" else None  # GPT-2 and BERT derive head_dim: no fewer heads
    pruned, report = structured.structured(model, calibrate(model, tokens(), 4), heads, 0.5, 0.34)
    assert len(blocks_of(pruned)) == pruned.config.num_hidden_layers == 2
    if heads:
        assert pruned.config.num_attention_heads == 2 and report["heads"] == {"before": 4, "after": 2}
    pruned.save_pretrained(tmp_path)
    reloaded = auto_class(AutoConfig.from_pretrained(tmp_path)).from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    ids, mask = padded()
    assert torch.equal(logits(reloaded, ids, mask), logits(pruned, ids, mask))
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())


def test_bert_heads_are_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"'prune.heads': 0.5 \(bert's config cannot express fewer heads at a "
                                          r"fixed width: head_dim = hidden_size / num_attention_heads"):
        methods.check(prune_config(["structured"], heads=0.5, ffn=0.0, layers=0.0), bert_classifier())


# --------------------------------------------------------------------------------------------------
# Every prune method leaves the heads alone
# --------------------------------------------------------------------------------------------------

METHOD_CONFIGS = {
    "l1_unstructured": {"amount": 0.5},
    "wanda": {"amount": 0.5},
    "structured": {"ffn": 0.5, "layers": 0.5},
    "lowrank": {"rank_ratio": 0.25, "activation_aware": True},
}


@pytest.mark.parametrize("kind", CLASSIFIERS)
@pytest.mark.parametrize("method", METHOD_CONFIGS)
def test_the_classifier_head_survives_every_prune_method(kind, method):
    model = MODELS[kind]()
    before = head_state(model, kind)
    cfg = prune_config([method], **METHOD_CONFIGS[method])
    methods.check(cfg, model)
    pruned, _ = methods.apply(model, cfg, tokens())
    make_permanent(pruned)
    assert head_state(pruned, kind).keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(head_state(pruned, kind)[key], value), key
    for name in HEADS[kind]:
        assert type(pruned.get_submodule(name)) is nn.Linear, name  # not factored, no masks
    assert logits(pruned, *padded()).shape == (6, LABELS)


@pytest.mark.parametrize("method", ["l1_unstructured", "wanda"])
def test_unstructured_sparsity_on_the_encoder_blocks_is_what_was_asked(method):
    model = bert_classifier()
    if method == "wanda":
        from lmforge.compression.wanda import wanda

        wanda(model, calibrate(model, tokens(), 4), 0.5, None)
    else:
        l1_unstructured(model, 0.5)
    report = sparsity_report(model)
    assert report["overall"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert set(report["per_type"]) == BERT_TYPES
    for layer_type, counts in report["per_type"].items():
        assert counts["sparsity"] == pytest.approx(0.5, abs=0.01), layer_type
    make_permanent(model)
    assert int((model.classifier.weight == 0).sum()) == 0 and int((model.bert.pooler.dense.weight == 0).sum()) == 0


def test_lowrank_bert_classifier_factors_the_blocks_and_reloads_as_a_classifier(tmp_path):
    model = bert_classifier()
    per_type = lowrank.lowrank(model, calibrate(model, tokens(), 4), 0.25, None, True)
    assert set(per_type) == BERT_TYPES and all(e["dense"] == 0 for e in per_type.values())
    assert set(lowrank.factored_layers(model)) == set(linear_layers(bert_classifier(), blocks_only=True))
    lowrank.save_lowrank(model, tmp_path, manifest={"method": ["lowrank"]})
    reloaded = lowrank.load_lowrank(tmp_path)
    assert type(reloaded) is BertForSequenceClassification
    ids, mask = padded()
    assert torch.allclose(logits(reloaded, ids, mask), logits(model, ids, mask), atol=1e-6)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in bert_classifier().parameters())


# --------------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------------


def quantize_config(method: str, **values) -> QuantizeConfig:
    base = {"method": method, "per_channel": True, "include_lm_head": True, "min_coverage": 0.95,
            "calibration_blocks": 0, "block_size": None, "check_max_blocks": 4, "check_max_examples": 4,
            "task_model": False, "gate": None, "candidates": None, "max_accuracy_drop": 0.01, "smooth_alpha": 0.5,
            "smooth_blocks": 4, "fallback_layers": 4}
    return QuantizeConfig(**{**base, **values})


def assert_close_to_fp32(quantized, model, rel: float = INT8_REL) -> None:
    ids, mask = padded()
    ref, out = logits(model, ids, mask), logits(quantized, ids, mask)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= rel * ref.abs().max()
    if ref.dim() == 2:  # a classifier: the predicted label of every row
        assert torch.equal(out.argmax(-1), ref.argmax(-1))
    else:  # an MLM: the predicted token of nearly every real position
        agree = (out.argmax(-1) == ref.argmax(-1))[mask.bool()].float().mean()
        assert agree >= 0.85


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", ["dynamic_int8", "bf16"])
def test_torch_quantized_models_load_back_as_their_class_with_close_logits(kind, method, tmp_path):
    model = MODELS[kind]()
    report = quantize_to(model, tmp_path, quantize_config(method))
    assert report["coverage"] >= 0.95
    quantized = load_quantized(tmp_path)
    assert type(quantized) is type(model)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [type(model).__name__]
    assert_close_to_fp32(quantized, model, rel=INT8_REL if method == "dynamic_int8" else 0.02)


def test_dynamic_int8_bert_classifier_quantizes_the_head_and_the_pooler_too(tmp_path):
    model = bert_classifier()
    report = quantize_to(model, tmp_path, quantize_config("dynamic_int8", include_lm_head=False))
    int8 = {m["name"] for m in report["modules"] if m["dtype"] == "qint8"}
    assert int8 == set(linear_layers(model, blocks_only=False)) and report["coverage"] == 1.0


ONNX_CASES = {
    "bert_classifier-dynamic": ("bert_classifier", {}),
    "bert_classifier-static": ("bert_classifier", {"calibration_blocks": 4}),
    "bert_classifier-blockwise": ("bert_classifier", {"block_size": 16}),
    "bert_mlm-dynamic": ("bert_mlm", {}),
    "gpt2_classifier-dynamic": ("gpt2_classifier", {}),
}


@pytest.mark.parametrize("case", ONNX_CASES)
def test_onnx_int8_on_encoders_and_classifiers(case, tmp_path):
    kind, values = ONNX_CASES[case]
    model = MODELS[kind]()
    report = quantize_to(model, tmp_path, quantize_config("onnx_int8", **values),
                         calibration_blocks=tokens(4, 16, seed=3).tolist())
    assert report["coverage"] >= 0.95
    # only an LM head tied to the embedding shares its int8 copy; BERT's MLM decoder is one (blockwise: never)
    assert report["shared_embedding"] == (kind == "bert_mlm")
    quantized = load_quantized(tmp_path, threads=1)
    assert isinstance(quantized, onnx_int8.OnnxModel)
    assert_close_to_fp32(quantized, model)


# --------------------------------------------------------------------------------------------------
# The task-only model is a causal LM's
# --------------------------------------------------------------------------------------------------


def test_task_model_is_refused_for_a_classifier_and_its_predictions_are_its_logits():
    model = bert_classifier()
    assert not task_head.applies(model) and not task_head.applies(bert_mlm())
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    assert task_head.applies(lm) and task_head.applies(lm.config)
    with pytest.raises(ConfigError, match="classifier model .*already the label scores.*quantize.task_model"):
        task_head.TaskModel(model, [0, 1])
    ids, mask = padded()
    assert torch.equal(task_head.full_model_predictions(model, ids, mask, [0, 1]), logits(model, ids, mask).argmax(-1))
