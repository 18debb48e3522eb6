"""The class a compressed model is rebuilt as: the same one it was compressed from.

Compressed folders that are not plain `save_pretrained` ones (dynamic int8, low-rank, ONNX) store only
config.json and rebuild the architecture from it, and structured pruning builds a smaller model from a
changed config. Each goes through `lmforge.modeling.family.new_model`, which reads the class from the
config's `architectures`, so a classifier (`*ForSequenceClassification`) or a BertForMaskedLM comes back
as itself and not as a causal LM. A model built in memory from a config has no `architectures` yet
(only `save_pretrained` records it), so `config_of` writes the model's own class into a copy first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn


def config_of(model: nn.Module) -> Any:
    """A copy of `model.config` that names the model's class in `architectures`, as `save_pretrained` does."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    return config


def save_config(model: nn.Module, out_dir: str | Path) -> None:
    """config.json for `model`, recording its class (the model's own config is left as it is)."""
    config_of(model).save_pretrained(out_dir)
