"""SmoothQuant-style smoothing (Xiao et al. 2022): move activation outliers into the weights before int8.

ONNX Runtime's dynamic int8 quantizes each activation tensor with one scale; a few input channels far larger
than the rest (Llama-family models) leave the others few int8 levels. For a norm whose output feeds linears,
per input channel j:

    s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)      (max|x_j| over calibration tokens, max|w_j| over the
                                                      weight column j of every linear that reads the norm)
    norm.weight[j] /= s_j, norm.bias[j] /= s_j       (the norm's output channel j shrinks by s_j)
    W[:, j] *= s_j in each of those linears          (their products are unchanged)

an exact transform in fp32: the model computes the same function (to rounding), with the activations'
outliers flattened and the weights' columns grown, where per-output-channel weight scales absorb them.

    smoothed = smooth(copy.deepcopy(model), blocks, alpha=0.5)   # in place; returns a report

Pairs (norm -> the linears that read only it): GPT-2 ln_1 -> attn.c_attn, ln_2 -> mlp.c_fc (Conv1D: weight
(in, out)); Llama-family input_layernorm -> q/k/v_proj, post_attention_layernorm -> gate/up_proj (one s for
the linears sharing a norm). BERT is skipped: it is post-LN, its LayerNorm output is also the residual stream
of the next sublayer, so scaling it would change the function unless the residual path were rescaled too;
MiniLM loses nothing with per-channel int8 anyway (docs/quantization.md). A low-rank factored linear (a
Sequential) is not a plain weight: its pair is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lmforge.modeling.arch import blocks_of

log = logging.getLogger(__name__)

# (norm attribute, linear attributes) inside one block, per model_type
PAIRS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "gpt2": (("ln_1", ("attn.c_attn",)), ("ln_2", ("mlp.c_fc",))),
    "llama": (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
}
PAIRS["mistral"] = PAIRS["qwen2"] = PAIRS["llama"]
MIN_SCALE = 1e-5  # floor of max|x| and max|w| (a dead channel) before the power


def supports(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) in PAIRS


def _conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 layer: weight (in, out)


def _in_columns(module: nn.Module) -> torch.Tensor | None:
    """max |w| per input channel of a Linear (weight (out, in)) or Conv1D (weight (in, out)); None otherwise."""
    if isinstance(module, nn.Linear):
        return module.weight.detach().abs().amax(dim=0)
    if _conv1d(module):
        return module.weight.detach().abs().amax(dim=1)
    return None


def _scale_in(module: nn.Module, s: torch.Tensor) -> None:
    if isinstance(module, nn.Linear):
        module.weight.mul_(s.to(module.weight.dtype)[None, :])
    else:
        module.weight.mul_(s.to(module.weight.dtype)[:, None])


def _pairs(model: nn.Module) -> list[tuple[str, nn.Module, list[nn.Module]]]:
    """(name, norm, linears) of every smoothable pair of the model's blocks."""
    found = []
    for i, block in enumerate(blocks_of(model)):
        for norm_name, linear_names in PAIRS[model.config.model_type]:
            norm = block.get_submodule(norm_name)
            linears = [block.get_submodule(name) for name in linear_names]
            if all(_in_columns(linear) is not None for linear in linears):
                found.append((f"{i}.{norm_name}", norm, linears))
    return found


@torch.no_grad()
def activation_max(model: nn.Module, blocks: Sequence[Sequence[int]], norms: dict[str, nn.Module],
                   batch: int = 8) -> dict[str, torch.Tensor]:
    """max |output| per channel of each named norm over the calibration blocks (hooks; one forward pass)."""
    stats: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            value = output.detach().abs().reshape(-1, output.shape[-1]).amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], value) if name in stats else value
        return record

    handles = [norm.register_forward_hook(hook(name)) for name, norm in norms.items()]
    try:
        for start in range(0, len(blocks), batch):
            chunk = [list(b) for b in blocks[start: start + batch]]
            length = min(map(len, chunk))  # calibration blocks are all one length; cut any longer one
            ids = torch.tensor([b[:length] for b in chunk])
            # the transformer body only: the norms are inside it, and a classifier head would want a pad token
            model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def smooth(model: nn.Module, blocks: Sequence[Sequence[int]], alpha: float = 0.5) -> dict[str, Any]:
    """Smooth `model` in place (see the module doc) on the calibration `blocks`; returns a report: pairs
    smoothed, alpha, and the largest max|x_j| / median max|x_j| before and after (the outlier ratio)."""
    if not supports(model):
        raise ValueError(f"smoothing supports model types {', '.join(PAIRS)}, not {model.config.model_type!r} "
                         "(BERT is post-LN: see lmforge.compression.smooth)")
    if not blocks:
        raise ValueError("smoothing needs calibration blocks (quantize.smooth_blocks >= 1)")
    pairs = _pairs(model)
    was_training = model.training
    model.eval()
    x_max = activation_max(model, blocks, {name: norm for name, norm, _ in pairs})
    ratios = []
    for name, norm, linears in pairs:
        x = x_max[name].clamp(min=MIN_SCALE)
        w = torch.stack([_in_columns(linear).float() for linear in linears]).amax(dim=0).clamp(min=MIN_SCALE)
        s = (x.pow(alpha) / w.pow(1 - alpha)).clamp(min=MIN_SCALE)
        norm.weight.div_(s.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s.to(norm.bias.dtype))
        for linear in linears:
            _scale_in(linear, s)
        after = x / s
        ratios.append((float(x.max() / x.median()), float(after.max() / after.median())))
    model.train(was_training)
    report = {"alpha": alpha, "pairs": len(pairs), "calibration_blocks": len(blocks),
              "outlier_ratio_before": round(max(r[0] for r in ratios), 2) if ratios else None,
              "outlier_ratio_after": round(max(r[1] for r in ratios), 2) if ratios else None}
    log.info("smoothing (alpha %.2f): %d norm -> linear pairs, largest max|x| / median %.1f -> %.1f", alpha,
             report["pairs"], report["outlier_ratio_before"] or 0, report["outlier_ratio_after"] or 0)
    return report
