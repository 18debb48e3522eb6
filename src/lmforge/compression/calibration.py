"""Calibration: statistics of a model's activations on a few train-split LM blocks.

Every activation-aware method reads the same one pass over the data:
- `input_sq[name]`: the sum over calibration tokens of x_j^2 for every input feature j of every
  block linear layer (Wanda's ||X_j||_2 is its square root; ASVD's RMS is sqrt(sum / tokens)),
- `block_influence[i]`: ShortGPT's 1 - cos(block input, block output), averaged over tokens.
Any model of the chain works: a causal LM, a BERT encoder (the batch is all real tokens, so no attention
mask is needed) or a classifier of either (its head is outside the blocks and not measured).
Statistics are collected on the dense model in one pass (not layer by layer as in the Wanda paper):
cheaper, and the difference is small at the sparsities used here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge import quiet
from lmforge.compression.linear import linear_layers
from lmforge.modeling.arch import blocks_of


@dataclass
class Calibration:
    tokens: int = 0
    samples: int = 0
    input_sq: dict[str, torch.Tensor] = field(default_factory=dict)
    block_influence: list[float] = field(default_factory=list)

    def input_norm(self, name: str) -> torch.Tensor:
        """||X_j||_2 over the calibration tokens, per input feature of layer `name`."""
        return self.input_sq[name].sqrt()

    def input_rms(self, name: str) -> torch.Tensor:
        return (self.input_sq[name] / max(self.tokens, 1)).sqrt()


@torch.no_grad()
def calibrate(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> Calibration:
    """Run `blocks` (samples x seq) through `model` and collect the statistics of the module docstring."""
    model.eval()
    result = Calibration(samples=len(blocks))
    layers = linear_layers(model, blocks_only=True)
    stack = blocks_of(model)
    influence_sum = torch.zeros(len(stack), dtype=torch.float64)

    def on_linear(name: str):
        def hook(module, args, output):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            result.input_sq[name] = result.input_sq.get(name, 0) + (x * x).sum(0)
        return hook

    def on_block(index: int):
        def hook(module, args, kwargs, output):
            hidden_in = args[0] if args else kwargs["hidden_states"]  # every family's block takes it first
            hidden_out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(hidden_in.double(), hidden_out.double(), dim=-1)
            influence_sum[index] += (1 - cos).sum()
        return hook

    handles = [module.register_forward_hook(on_linear(name)) for name, module in layers.items()]
    handles += [block.register_forward_hook(on_block(i), with_kwargs=True) for i, block in enumerate(stack)]
    try:
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size]
            with quiet.third_party():  # packed blocks: no padding, no attention mask needed
                model(input_ids=batch)
            result.tokens += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    result.block_influence = (influence_sum / max(result.tokens, 1)).tolist()
    return result
