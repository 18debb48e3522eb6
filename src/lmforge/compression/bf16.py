"""bf16: every floating-point weight stored and run in bfloat16 (half the bytes of fp32).

Fast where the hardware has bf16 matrix units (GPUs, CPUs with AMX or AVX512_BF16; see lmforge.hardware),
emulated and slow elsewhere. The folder is a plain `save_pretrained` one (safetensors in bf16, config
dtype bfloat16) plus the quantization.json manifest, so `from_pretrained` of the class config.json names
(`lmforge.modeling.family.auto_class`: a causal LM, a BERT MLM or a classifier) loads it too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from lmforge import hardware
from lmforge.compression.lowrank import refactor
from lmforge.errors import DataError
from lmforge.modeling.family import auto_class, new_model

METHOD = "bf16"


def to_bf16(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A bf16 copy of `model` (the input is left as it is) and its coverage: bf16 elements of the
    weight matrices (rank >= 2 parameters) over all of them."""
    model = copy.deepcopy(model).to(torch.bfloat16).eval()
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    total = sum(p.numel() for p in matrices)
    bf16 = sum(p.numel() for p in matrices if p.dtype == torch.bfloat16)
    return model, {"coverage": bf16 / total if total else 0.0, "int8_params": 0, "bf16_params": bf16,
                   "linear_params": total, "dtype": "bfloat16",
                   "cpu_native_bf16": hardware.bf16_supported() if not torch.cuda.is_available() else None}


def save(model: nn.Module, out_dir: str | Path) -> None:
    model.save_pretrained(out_dir)  # safetensors, in the parameters' own dtype


def load(path: str | Path, factored: list[dict[str, Any]] | None = None) -> nn.Module:
    """The bf16 model of a folder written by `save`; `factored`: the low-rank layers (lowrank.layout) of a
    low-rank pruned model, rebuilt before the weights are read."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    if not factored:
        return auto_class(config).from_pretrained(path, dtype=torch.bfloat16).eval()
    model = refactor(new_model(config), factored, path / "quantization.json").to(torch.bfloat16)
    tensors = load_file(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight", "cls.predictions.decoder.weight"}  # save_pretrained stores a tied head once
    if unexpected or set(missing) - tied:
        raise DataError(f"{path}/model.safetensors: does not match the factored layers of {path}/quantization.json: "
                        f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model.eval()
