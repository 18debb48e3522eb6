"""Magnitude pruning of the transformer blocks, and a sparsity report measured from the weights.

The prune stage calls, in order: `l1_unstructured` (masks applied as a reparametrisation:
`weight = weight_orig * weight_mask`, recomputed before every forward), an optional recovery
fine-tune (gradients flow to `weight_orig`, the mask keeps pruned weights at zero), then
`make_permanent` before `save_pretrained`, so the saved model has plain `weight` tensors with zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from lmforge.compression.linear import block_layer_type, linear_layers


def l1_unstructured(model: nn.Module, amount: float) -> None:
    """Zero the `amount` fraction of smallest-magnitude weights of every block linear-like layer.

    Each layer is pruned on its own (the same fraction per layer), Conv1D included. The pruning
    reparametrisation stays in place; call `make_permanent` before saving.
    """
    for module in linear_layers(model, blocks_only=True).values():
        prune.l1_unstructured(module, name="weight", amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Fold every pruning mask into its tensor: `weight_orig` + `weight_mask` become a plain `weight`."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def _effective_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the forward pass uses, each once: `weight` (masked) in place of `weight_orig`."""
    seen: set[int] = set()
    tensors = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights (lm_head / wte) count once
                continue
            seen.add(id(param))
            if name.endswith("_orig") and hasattr(module, name[: -len("_orig")] + "_mask"):
                param = getattr(module, name[: -len("_orig")])
            tensors.append(param)
    return tensors


def _counts(weights: list[torch.Tensor]) -> dict[str, Any]:
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"zeros": zeros, "weights": total, "sparsity": zeros / total if total else 0.0}


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Zeros / weights of the block linear layers, overall and per layer type; model (non-zero) parameters.

    Measured from the weights the model computes with (masked or permanent), never from the config.
    """
    layers = linear_layers(model, blocks_only=True)
    by_type: dict[str, list[torch.Tensor]] = {}
    for name, module in layers.items():
        by_type.setdefault(block_layer_type(name, model), []).append(module.weight)
    params = _effective_parameters(model)
    return {
        "overall": _counts([module.weight for module in layers.values()]),
        "per_type": {layer_type: _counts(weights) for layer_type, weights in sorted(by_type.items())},
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int(p.count_nonzero()) for p in params),
    }
