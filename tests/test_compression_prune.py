"""Magnitude pruning: coverage of GPT-2's Conv1D layers, measured sparsity, masks through recovery, saving."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_gpt2
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from lmforge.compression.linear import linear_layers
from lmforge.compression.prune import l1_unstructured, make_permanent, sparsity_report

LAYER_TYPES = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}


def test_linear_layers_finds_conv1d_and_separates_the_head():
    model = tiny_gpt2()
    blocks = linear_layers(model, blocks_only=True)
    assert len(blocks) == 2 * len(LAYER_TYPES)
    assert all(isinstance(m, Conv1D) for m in blocks.values())
    assert {name.split(".", 3)[3] for name in blocks} == LAYER_TYPES
    everything = linear_layers(model, blocks_only=False)
    assert set(everything) - set(blocks) == {"lm_head"}


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.8])
def test_measured_sparsity_matches_amount_overall_and_per_type(amount):
    model = tiny_gpt2()
    dense = sparsity_report(model)
    assert dense["overall"]["zeros"] == 0
    l1_unstructured(model, amount)
    report = sparsity_report(model)
    assert report["overall"]["sparsity"] == pytest.approx(amount, abs=0.01)
    assert set(report["per_type"]) == LAYER_TYPES
    for layer_type, counts in report["per_type"].items():
        assert counts["sparsity"] == pytest.approx(amount, abs=0.01), layer_type
    # only block weights are pruned: the model loses exactly the pruned weights (biases start at zero)
    assert dense["nonzero_params"] - report["nonzero_params"] == report["overall"]["zeros"]
    # the tied head / embedding is counted once, and weight_orig is not counted besides weight
    assert report["params"] == dense["params"] == sum(p.numel() for p in tiny_gpt2().parameters())


def test_pruning_keeps_the_smallest_weights_out():
    model = tiny_gpt2()
    original = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    l1_unstructured(model, 0.5)
    pruned = model.transformer.h[0].mlp.c_fc.weight
    kept, dropped = original[pruned != 0].abs(), original[pruned == 0].abs()
    assert kept.min() >= dropped.max()


def test_masks_survive_recovery_training_and_make_permanent():
    model = tiny_gpt2()
    l1_unstructured(model, 0.5)
    layers = linear_layers(model, blocks_only=True)
    masks = {name: module.weight_mask.clone() for name, module in layers.items()}
    before = {name: module.weight.detach().clone() for name, module in layers.items()}

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    for name, module in layers.items():
        assert torch.equal(module.weight == 0, masks[name] == 0), name  # zeros stayed zero
        assert not torch.equal(module.weight, before[name]), name  # and the rest did train
    zeros_before = sparsity_report(model)["overall"]["zeros"]

    make_permanent(model)
    for name, module in layers.items():
        param_names = {n for n, _ in module.named_parameters(recurse=False)}
        assert param_names == {"weight", "bias"}, name
        assert not hasattr(module, "weight_mask") and not module._forward_pre_hooks
        assert isinstance(module.weight, nn.Parameter)
        assert torch.equal(module.weight == 0, masks[name] == 0), name
    assert sparsity_report(model)["overall"]["zeros"] == zeros_before


def test_save_pretrained_round_trip_keeps_sparsity(tmp_path):
    model = tiny_gpt2()
    l1_unstructured(model, 0.6)
    make_permanent(model)
    report = sparsity_report(model)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sparsity_report(reloaded) == report
    batch = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(batch).logits, reloaded(batch).logits)
