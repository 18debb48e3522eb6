"""Wanda (Sun et al., 2023): prune by |W_ij| x ||X_j||_2, compared within each output row.

A weight that multiplies a large input feature matters more than its magnitude alone says; Wanda
scores it by |weight| times the L2 norm of that input feature over the calibration tokens, and
removes the lowest-scoring `amount` fraction of every output row (or, with an N:M pattern, keeps
the N best of every M consecutive inputs of a row: 2:4 is what sparse tensor cores accelerate).

The masks use the same reparametrisation as `prune.l1_unstructured`, so recovery keeps pruned
weights at zero and `prune.make_permanent` folds them before saving.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune
from transformers.pytorch_utils import Conv1D

from lmforge.compression.calibration import Calibration
from lmforge.compression.linear import linear_layers


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W| x ||X||, for a weight in nn.Linear layout (out, in)."""
    return weight.abs() * input_norm.to(weight.dtype).unsqueeze(0)


def row_mask(scores: torch.Tensor, amount: float | None, n_m: tuple[int, int] | None) -> torch.Tensor:
    """1 where a weight is kept: per output row, the (1 - amount) best, or N of every M consecutive."""
    out_features, in_features = scores.shape
    if n_m is not None:
        n, m = n_m
        groups = scores.reshape(out_features, in_features // m, m)
        keep = groups.topk(n, dim=-1).indices
        mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
        return mask.reshape(out_features, in_features)
    pruned = int(round(amount * in_features))
    mask = torch.ones_like(scores)
    if pruned:
        drop = scores.topk(pruned, dim=1, largest=False).indices
        mask.scatter_(1, drop, 0.0)
    return mask


@torch.no_grad()
def wanda(model: nn.Module, calibration: Calibration, amount: float | None,
          n_m: tuple[int, int] | None) -> None:
    """Attach Wanda masks to every block linear layer of `model` (Conv1D included)."""
    for name, module in linear_layers(model, blocks_only=True).items():
        conv = isinstance(module, Conv1D)  # weight stored (in, out)
        weight = module.weight.t() if conv else module.weight
        mask = row_mask(wanda_scores(weight, calibration.input_norm(name)), amount, n_m)
        prune.custom_from_mask(module, name="weight", mask=mask.t() if conv else mask)
