"""Linear-like layers of a model of the chain: a causal LM, a BERT encoder, or a classifier of either.

The blocks are the items of the model's stack of layers (GPT-2's `transformer.h`, Llama's `model.layers`,
BERT's `bert.encoder.layer`): what pruning, low-rank and calibration touch. Everything else is outside them
and is never pruned: embeddings, the LM head (BERT's MLM head with its transform), a classifier head
(`score`, `classifier`) and BERT's pooler; quantization may still take those (`blocks_only=False`).

GPT-2 implements its attention and MLP projections as `transformers.pytorch_utils.Conv1D`, a linear
layer whose weight is stored transposed, (in, out). Tools that look for `nn.Linear` (dynamic
quantization, many pruning and export utilities) silently skip them, so compression code finds
layers through `linear_layers` and converts them with `conv1d_to_linear` where a tool needs it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

LINEAR_TYPES = (nn.Linear, Conv1D)


def _block_prefixes(model: nn.Module) -> list[str]:
    """Name prefixes of the transformer blocks: the items of every nn.ModuleList ("transformer.h.0.")."""
    return [f"{name}.{index}." for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) for index in range(len(module))]


def linear_layers(model: nn.Module, *, blocks_only: bool) -> dict[str, nn.Module]:
    """Every nn.Linear and Conv1D of `model` by qualified name.

    blocks_only: only the layers inside the transformer blocks, so not the LM head, a classifier head or
    BERT's pooler (nor anything else outside the stacked layers).
    """
    prefixes = _block_prefixes(model) if blocks_only else []
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, LINEAR_TYPES)
        and (not blocks_only or any(name.startswith(prefix) for prefix in prefixes))
    }


def block_layer_type(name: str, model: nn.Module) -> str:
    """The name within its block, the same in every block: "transformer.h.3.attn.c_attn" -> "attn.c_attn"."""
    for prefix in _block_prefixes(model):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every Conv1D of `model` in place by the equivalent nn.Linear; returns `model`."""
    conv_names = [name for name, module in model.named_modules() if isinstance(module, Conv1D)]
    for name in conv_names:
        conv = model.get_submodule(name)
        linear = nn.Linear(conv.nx, conv.nf, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        linear.train(conv.training)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, linear)
    return model
