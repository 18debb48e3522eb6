"""Every stage's input model, loaded the one checked way: safetensors only, finite weights. `load_hf` is the
loader of the hf format of lmforge.modeling.io (which loads every format); the stages whose input is always a
`save_pretrained` folder call it directly, so they do not depend on the code of the compressed formats.

A model folder of the chain that is truncated, or holds a NaN or an infinity, stops the stage that
reads it before any work, with a message naming the file, the tensor and the stage that wrote it,
instead of a raw library error or, worse, a NaN model passed on down the chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig

from lmforge.errors import DataError, LmforgeError, missing_input, require, rerun_hint
from lmforge.modeling.family import auto_class


def _named_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(source, nn.Module):
        yield from source.named_parameters()
        yield from source.named_buffers()
    else:
        yield from source.items()


def check_finite(source: nn.Module | Mapping[str, torch.Tensor], where: str,
                 error: type[LmforgeError] = DataError) -> None:
    """Raise `error` naming the first floating-point tensor of `source` with a NaN or an infinity.

    One synchronisation for the whole model (a stack of per-tensor flags): cheap enough for every step.
    """
    # a sharded (FSDP) parameter is checked on this process's shard
    local = ((name, t.to_local() if hasattr(t, "to_local") else t) for name, t in _named_tensors(source))
    tensors = [(name, t) for name, t in local if t.is_floating_point() and t.numel()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(finite.all()):
        return
    name, tensor = tensors[int((~finite).nonzero()[0])]
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    raise error(f"{where}: tensor '{name}' has {nan} NaN and {inf} infinite value(s) of {tensor.numel()}")


def check_safetensors(folder: Path) -> list[Path]:
    """The folder's safetensors files, each with a readable header and all its data (not truncated)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise missing_input(folder, "no .safetensors weights")
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):  # checks the header covers the file: not truncated
                pass
        except (SafetensorError, OSError) as exc:
            raise missing_input(file, f"cannot be read as safetensors: {exc}") from exc
    return files


def load_hf(folder: str | Path, model_class: type | None = None, **kwargs: Any) -> Any:
    """A `save_pretrained` folder of the chain as an fp32 model of its own kind (causal LM, masked LM,
    classifier: lmforge.modeling.family) or as `model_class` (a bare encoder with the heads of an objective),
    from safetensors only, checked finite."""
    folder = require(folder)
    files = check_safetensors(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model = (model_class or auto_class(config)).from_pretrained(folder, use_safetensors=True, dtype=torch.float32,
                                                                **kwargs)
    where = str(files[0]) if len(files) == 1 else str(folder)
    check_finite(model, f"{where} ({rerun_hint(folder)})")
    return model
