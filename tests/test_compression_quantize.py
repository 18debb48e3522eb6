"""Dynamic int8 (torch): Conv1D conversion, coverage, the safetensors + JSON format and its loader.
The stage, for every method: test_quantize_stage.py."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_gpt2
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from transformers.pytorch_utils import Conv1D

from lmforge.compression.dynamic_int8 import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    load_quantized,
    quantize_dynamic_int8,
    save_quantized,
)
from lmforge.compression.linear import conv1d_to_linear, linear_layers
from lmforge.compression.prune import l1_unstructured, make_permanent
from lmforge.errors import DataError

VOCAB = 300


def tokens(seed: int = 0, shape: tuple[int, int] = (4, 32)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch).logits


def test_conv1d_to_linear_is_numerically_identical():
    model = tiny_gpt2()
    batch = tokens()
    expected = logits(model, batch)
    conv1d_to_linear(model)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    layer_types = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert set(linear_layers(model, blocks_only=True)) == {
        f"transformer.h.{i}.{t}" for i in range(2) for t in layer_types}
    c_fc = model.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, nn.Linear) and c_fc.weight.shape == (128, 32)
    assert torch.allclose(logits(model, batch), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_channel", [True, False])
def test_every_linear_layer_becomes_int8(per_channel):
    model = tiny_gpt2()
    wte = model.transformer.wte.weight.detach().clone()
    quantized, report = quantize_dynamic_int8(model, per_channel=per_channel, include_lm_head=True)

    names = {m["name"] for m in report["modules"]}
    assert len(names) == 9  # 2 blocks x 4 former Conv1D + lm_head
    for name in names:
        module = quantized.get_submodule(name)
        assert isinstance(module, DynamicQuantizedLinear), name
        assert module.weight().dtype == torch.qint8
        scheme = module.weight().qscheme()
        assert scheme == (torch.per_channel_affine if per_channel else torch.per_tensor_affine)
    assert report["coverage"] >= 0.95 and report["int8_params"] == report["linear_params"]
    # the tied embedding is untouched and stays fp32; the input model is left as it was
    assert quantized.transformer.wte.weight.dtype == torch.float32
    assert torch.equal(quantized.transformer.wte.weight, wte)
    assert isinstance(model.transformer.h[0].attn.c_attn, Conv1D)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_without_lm_head_coverage_drops_by_its_share():
    model = tiny_gpt2()
    _, report = quantize_dynamic_int8(model, per_channel=True, include_lm_head=False)
    head = VOCAB * 32
    assert report["linear_params"] == 2 * 12 * 32 * 32 + head
    assert report["coverage"] == pytest.approx(1 - head / report["linear_params"])
    dtypes = {m["name"]: m["dtype"] for m in report["modules"]}
    assert dtypes.pop("lm_head") == "float32" and set(dtypes.values()) == {"qint8"}


def test_logits_stay_close_to_fp32():
    model = tiny_gpt2()
    quantized, _ = quantize_dynamic_int8(model, per_channel=True, include_lm_head=True)
    batch = tokens(1)
    expected, actual = logits(model, batch), logits(quantized, batch)
    assert (expected - actual).abs().max() < 0.05 * expected.abs().max()
    assert (expected.argmax(-1) == actual.argmax(-1)).float().mean() >= 0.85


@pytest.mark.parametrize("per_channel,include_lm_head", [(True, True), (False, True), (True, False)])
def test_save_and_load_give_exactly_the_same_logits(tmp_path, per_channel, include_lm_head):
    model = tiny_gpt2()
    quantized, report = quantize_dynamic_int8(model, per_channel=per_channel, include_lm_head=include_lm_head)
    save_quantized(quantized, tmp_path, manifest={"method": "dynamic_int8", "coverage": report})
    reloaded = load_quantized(tmp_path)

    batch = tokens(2)
    assert torch.equal(logits(reloaded, batch), logits(quantized, batch))
    assert isinstance(reloaded.transformer.h[1].mlp.c_proj, DynamicQuantizedLinear)
    assert isinstance(reloaded.lm_head, DynamicQuantizedLinear) == include_lm_head
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 1 and len(manifest["modules"]) == (9 if include_lm_head else 8)


def test_saved_folder_is_smaller_and_has_no_pickle(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "fp32")
    quantized, _ = quantize_dynamic_int8(model, per_channel=True, include_lm_head=True)
    save_quantized(quantized, tmp_path / "int8", manifest={"method": "dynamic_int8"})
    files = {p.name for p in (tmp_path / "int8").iterdir()}
    assert files == {"config.json", MANIFEST_FILE, WEIGHTS_FILE}
    fp32_bytes = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    # the embedding (tied to the int8 head) stays fp32: on this tiny model it is a third of the weights
    assert (tmp_path / "int8" / WEIGHTS_FILE).stat().st_size < 0.75 * fp32_bytes


def test_pruned_zeros_stay_zero_in_int8():
    model = tiny_gpt2()
    l1_unstructured(model, 0.5)
    make_permanent(model)
    quantized, _ = quantize_dynamic_int8(model, per_channel=True, include_lm_head=False)
    weight = quantized.transformer.h[0].mlp.c_fc.weight()
    zeros = model.transformer.h[0].mlp.c_fc.weight.t() == 0
    assert torch.all(weight.dequantize()[zeros] == 0)


def test_load_quantized_rejects_missing_or_inconsistent_files(tmp_path):
    quantized, _ = quantize_dynamic_int8(tiny_gpt2(), per_channel=True, include_lm_head=True)
    save_quantized(quantized, tmp_path, manifest={"method": "dynamic_int8"})
    manifest_path = tmp_path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())

    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataError, match=r"quantization\.json.*format_version 99"):
        load_quantized(tmp_path)

    manifest_path.write_text(json.dumps({**manifest, "modules": manifest["modules"][:-1]}))
    with pytest.raises(DataError, match="unexpected tensors"):
        load_quantized(tmp_path)

    manifest_path.write_text(json.dumps(manifest))
    weights_path = tmp_path / WEIGHTS_FILE
    weights_path.rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=str(weights_path)):
        load_quantized(tmp_path)

    manifest_path.unlink()
    with pytest.raises(DataError, match=str(manifest_path)):
        load_quantized(tmp_path)
