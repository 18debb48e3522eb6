"""Low-rank factorization: W (out x in) ~ U_r V_r, two linear layers of rank r, from a truncated SVD.

Plain: the SVD of W itself. Activation-aware (ASVD, Yuan et al. 2023): the SVD of W S with
S = diag(rms(X_j))^0.5, the input features' RMS over the calibration tokens, then V_r S^-1; the
truncation then discards what matters least for the real inputs, not for a unit-norm input.
The rank is `rank_ratio * min(out, in)` or the smallest rank keeping `energy` of sum(sigma^2); a
layer is factored only where r * (out + in) < out * in (fewer parameters and FLOPs), otherwise it
stays dense and the report says so. Only the blocks' linear layers are factored: an LM head, a
classifier head (`score`, `classifier`) and BERT's pooler stay as they are.

A factored model is not a Hugging Face architecture, so it is saved as (no pickle anywhere):
    config.json               the dense architecture it was factored from, and its class (a causal LM, a BERT
                              MLM or a classifier loads back as itself; see model_class)
    model_lowrank.safetensors the state dict, factored layers as `<name>.down.weight` (r x in) and
                              `<name>.up.weight` / `<name>.up.bias` (out x r, out); tied weights once
    lowrank.json              manifest: format_version, method, activation_aware, and per factored
                              layer its name, in_features, out_features, rank and bias
and read back with `load_lowrank(path)`. The weights file is deliberately not model.safetensors:
`from_pretrained` on the folder fails rather than loading a model without its factors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig
from transformers.pytorch_utils import Conv1D

from lmforge.artifacts import read_json, write_json
from lmforge.compression.linear import block_layer_type, linear_layers
from lmforge.compression.model_class import save_config
from lmforge.errors import DataError
from lmforge.modeling.family import new_model

if TYPE_CHECKING:  # evaluate loads factored models without the calibration (and data) code
    from lmforge.compression.calibration import Calibration

FORMAT_VERSION = 1
MANIFEST_FILE = "lowrank.json"
WEIGHTS_FILE = "model_lowrank.safetensors"
ASVD_ALPHA = 0.5  # the exponent of the activation scaling; ASVD found 0.5 best across models


class FactoredLinear(nn.Module):
    """y = up(down(x)): a rank-r replacement for a linear layer (out x in); bias on `up`."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def choose_rank(singular: torch.Tensor, out_features: int, in_features: int, rank_ratio: float | None,
                energy: float | None) -> int:
    if rank_ratio is not None:
        return max(1, int(round(rank_ratio * min(out_features, in_features))))
    cumulative = (singular.double() ** 2).cumsum(0) / (singular.double() ** 2).sum()
    return int((cumulative < energy).sum()) + 1


def pays(rank: int, out_features: int, in_features: int) -> bool:
    return rank * (out_features + in_features) < out_features * in_features


@torch.no_grad()
def factor(weight: torch.Tensor, bias: torch.Tensor | None, rank_ratio: float | None, energy: float | None,
           scale: torch.Tensor | None) -> tuple[FactoredLinear | None, int]:
    """The factored layer for `weight` (out x in, nn.Linear layout), or None where it does not pay; its rank."""
    out_features, in_features = weight.shape
    w = weight.double()
    if scale is not None:
        w = w * scale.double().unsqueeze(0)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank = choose_rank(s, out_features, in_features, rank_ratio, energy)
    if not pays(rank, out_features, in_features):
        return None, rank
    root = s[:rank].sqrt()
    down = root.unsqueeze(1) * vh[:rank]  # balanced split: both factors have the same scale
    if scale is not None:
        down = down / scale.double().unsqueeze(0)
    layer = FactoredLinear(in_features, out_features, rank, bias is not None).to(weight.dtype)
    layer.down.weight.copy_(down)
    layer.up.weight.copy_(u[:, :rank] * root.unsqueeze(0))
    if bias is not None:
        layer.up.bias.copy_(bias)
    return layer, rank


@torch.no_grad()
def lowrank(model: nn.Module, calibration: Calibration | None, rank_ratio: float | None, energy: float | None,
            activation_aware: bool) -> dict[str, Any]:
    """Replace every block linear layer of `model` where it pays, in place; returns the per-type report."""
    per_type: dict[str, dict[str, Any]] = {}
    for name, module in linear_layers(model, blocks_only=True).items():
        weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
        scale = None
        if activation_aware:
            scale = calibration.input_rms(name).clamp_min(1e-6) ** ASVD_ALPHA
        layer, rank = factor(weight, module.bias, rank_ratio, energy, scale)
        entry = per_type.setdefault(block_layer_type(name, model), {
            "shape": list(weight.shape), "ranks": [], "factored": 0, "dense": 0})
        entry["ranks"].append(rank)
        if layer is None:
            entry["dense"] += 1  # r * (out + in) >= out * in: factoring would not save anything
            continue
        entry["factored"] += 1
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.train(module.training))
    return per_type


def factored_layers(model: nn.Module) -> dict[str, FactoredLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FactoredLinear)}


# --------------------------------------------------------------------------------------------------
# Saving and loading (safetensors + JSON)
# --------------------------------------------------------------------------------------------------


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage once (a tied LM head is re-tied by the architecture on load)."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        if value.numel() and value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous()
    return state


def layout(model: nn.Module) -> list[dict[str, Any]]:
    """The factored layers of `model` (name, shape, rank, bias): what a loader needs to rebuild them. A
    quantized folder of a low-rank model carries it too, so int8 and bf16 loaders rebuild the factors."""
    return [{"name": name, "in_features": m.in_features, "out_features": m.out_features, "rank": m.rank,
             "bias": m.up.bias is not None} for name, m in factored_layers(model).items()]


def refactor(model: nn.Module, layers: list[dict[str, Any]], manifest_path: Path) -> nn.Module:
    """Swap each layer named in `layers` (from `layout`) for an empty FactoredLinear of its rank, in place."""
    for spec in layers:
        parent, _, child = spec["name"].rpartition(".")
        try:
            holder = model.get_submodule(parent)
            getattr(holder, child)
        except AttributeError as exc:
            raise DataError(f"{manifest_path}: '{spec['name']}' is not a layer of the {model.config.model_type} "
                            "architecture in config.json") from exc
        setattr(holder, child, FactoredLinear(spec["in_features"], spec["out_features"], spec["rank"], spec["bias"]))
    return model


def save_lowrank(model: nn.Module, out_dir: str | Path, *, manifest: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = layout(model)
    # one metadata key: with two, their order (and the file's bytes) changed between runs (see dynamic_int8)
    save_file(unique_state(model), out_dir / WEIGHTS_FILE, metadata={"format": f"lmforge-lowrank-v{FORMAT_VERSION}"})
    write_json(out_dir / MANIFEST_FILE, {"format_version": FORMAT_VERSION, **manifest,
                                         "weights_file": WEIGHTS_FILE, "layers": layers})
    save_config(model, out_dir)


def load_lowrank(path: str | Path) -> nn.Module:
    """Load a folder written by `save_lowrank` (JSON and safetensors only); eval mode, fp32.

    Builds the dense architecture from config.json (as its recorded class), swaps every layer named in
    lowrank.json for a FactoredLinear of the recorded rank, then loads every tensor.
    DataError names what does not match.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                        f"this loader reads {FORMAT_VERSION}")
    weights_path = path / manifest.get("weights_file", WEIGHTS_FILE)
    try:
        config = AutoConfig.from_pretrained(path)
        tensors = load_file(weights_path)
    except (OSError, ValueError, SafetensorError) as exc:
        raise DataError(f"{path}: not a complete low-rank model folder: {exc}") from exc
    model = refactor(new_model(config), manifest["layers"], manifest_path)
    expected = unique_state(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DataError(f"{weights_path}: does not match {manifest_path}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    for key, target in expected.items():
        if tensors[key].shape != target.shape:
            raise DataError(f"{weights_path}: '{key}' has shape {tuple(tensors[key].shape)}, "
                            f"the manifest expects {tuple(target.shape)}")
    model.load_state_dict(tensors, strict=False)  # strict=False: the tied LM head is not stored twice
    return model.float().eval()


def lowrank_summary(per_type: dict[str, Any]) -> dict[str, Any]:
    """Per layer type: the shape, ranks, how many layers were factored and how many stayed dense."""
    return {t: {**e, "mean_rank_ratio": round(sum(e["ranks"]) / len(e["ranks"]) / min(e["shape"]), 4),
                "params_ratio": round(sum(min(r * sum(e["shape"]), math.prod(e["shape"])) for r in e["ranks"])
                                      / (len(e["ranks"]) * math.prod(e["shape"])), 4)}
            for t, e in sorted(per_type.items())}
