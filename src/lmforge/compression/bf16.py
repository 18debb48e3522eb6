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
from torch import nn
from transformers import AutoConfig

from lmforge import hardware
from lmforge.modeling.family import auto_class

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


def load(path: str | Path) -> nn.Module:
    return auto_class(AutoConfig.from_pretrained(path)).from_pretrained(path, dtype=torch.bfloat16).eval()
