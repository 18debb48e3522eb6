"""Facts about the architecture of a model of the chain, read off the model or its config: where its stack of
transformer blocks is, which of those blocks matter most (block influence, measured by
lmforge.compression.calibration), and its context length."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: GPT-2's `transformer.h`, Llama's `model.layers`, BERT's
    `bert.encoder.layer` (whatever head the class puts on top)."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError(f"{type(model).__name__}: no stack of transformer blocks (nn.ModuleList) found")
    return stacks[0]


def most_influential_blocks(block_influence: list[float], keep: int) -> list[int]:
    """Indices of the `keep` blocks of highest influence, in model order: the blocks that change their
    input least are the ones a shallower model does best without (ShortGPT)."""
    return torch.tensor(block_influence).topk(keep).indices.sort().values.tolist()


def context_length(config: Mapping[str, Any] | Any) -> int | None:
    """Positions the model has (GPT-2's n_positions, the max_position_embeddings of Llama and BERT), from a
    config.json dict or a transformers config; None when it declares neither."""
    def get(key: str) -> Any:
        return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

    return get("n_positions") or get("max_position_embeddings")
