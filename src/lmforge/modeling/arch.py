"""Facts about the architecture of a model of the chain, read off the model itself: where its stack of
transformer blocks is, and which of those blocks matter most (block influence, measured by
lmforge.compression.calibration)."""

from __future__ import annotations

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
