"""The prune methods by name, their configuration checks, and applying a list of them in order.

`check` refuses a bad configuration before any work (one ConfigError naming key, value and what is
allowed, or both methods of an impossible combination); `apply` runs the methods in order, each on
the previous one's result, calibrating again where a method needs activations of the current model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lmforge.compression import lowrank as lowrank_method
from lmforge.compression import prune as magnitude
from lmforge.compression import structured as structured_method
from lmforge.compression import wanda as wanda_method
from lmforge.compression.calibration import Calibration, calibrate
from lmforge.compression.linear import linear_layers
from lmforge.config import PRUNE_METHODS, PruneConfig
from lmforge.config.rules import check_prune
from lmforge.errors import ConfigError


def needs_calibration(cfg: PruneConfig, method: str) -> bool:
    return method in ("wanda", "structured") or (method == "lowrank" and bool(cfg.activation_aware))


def check(cfg: PruneConfig, model: nn.Module) -> None:
    """Every configuration error of the prune section for this model, before any work: the method list, its
    combinations and keys by the config rule `validate` runs (lmforge.config.rules.check_prune), then what needs
    the model: an N:M pattern's M dividing every layer's input width, the heads structured pruning can express."""
    check_prune(cfg)
    if "wanda" in cfg.method and cfg.n_m is not None:
        m = cfg.n_m[1]
        widths = {name: getattr(mod, "nx", None) or mod.in_features
                  for name, mod in linear_layers(model, blocks_only=True).items()}
        bad = {name: w for name, w in widths.items() if w % m}
        if bad:
            name, width = next(iter(bad.items()))
            raise ConfigError(f"invalid value for 'prune.n_m': {cfg.n_m!r} (expected M dividing every layer's "
                              f"input width; {name} has {width} inputs)")
    if "structured" in cfg.method:
        structured_method.family(model.config.model_type, cfg.heads)


def _l1_unstructured(model: nn.Module, cfg: PruneConfig, calib: Calibration | None) -> tuple[nn.Module, dict]:
    magnitude.l1_unstructured(model, cfg.amount)
    return model, {"amount": cfg.amount}


def _wanda(model: nn.Module, cfg: PruneConfig, calib: Calibration | None) -> tuple[nn.Module, dict]:
    wanda_method.wanda(model, calib, cfg.amount, tuple(cfg.n_m) if cfg.n_m else None)
    return model, {"amount": cfg.amount, "n_m": cfg.n_m}


def _structured(model: nn.Module, cfg: PruneConfig, calib: Calibration | None) -> tuple[nn.Module, dict]:
    return structured_method.structured(model, calib, cfg.heads, cfg.ffn, cfg.layers)


def _lowrank(model: nn.Module, cfg: PruneConfig, calib: Calibration | None) -> tuple[nn.Module, dict]:
    per_type = lowrank_method.lowrank(model, calib, cfg.rank_ratio, cfg.energy, bool(cfg.activation_aware))
    return model, {"rank_ratio": cfg.rank_ratio, "energy": cfg.energy, "activation_aware": cfg.activation_aware,
                   "per_type": lowrank_method.lowrank_summary(per_type)}


# name -> apply(model, cfg, calibration or None) -> (the model, possibly a new one; its report)
METHODS: dict[str, Callable[[nn.Module, PruneConfig, Calibration | None], tuple[nn.Module, dict[str, Any]]]] = {
    "l1_unstructured": _l1_unstructured, "wanda": _wanda, "structured": _structured, "lowrank": _lowrank}
if set(METHODS) != set(PRUNE_METHODS):  # the config schema names the methods validate accepts
    raise RuntimeError(f"prune methods {sorted(METHODS)} differ from config.PRUNE_METHODS {sorted(PRUNE_METHODS)}")


def apply(model: nn.Module, cfg: PruneConfig,
          calibration_blocks: torch.Tensor | None) -> tuple[nn.Module, dict[str, Any]]:
    """Run `cfg.method` in order on `model`; returns the (possibly new) model and a report per method (none for
    `method: []`, which returns the model as it is; the blocks are then not needed)."""
    report: dict[str, Any] = {}
    for method in cfg.method:
        calib = calibrate(model, calibration_blocks, cfg.calibration.batch_size) \
            if needs_calibration(cfg, method) else None
        model, report[method] = METHODS[method](model, cfg, calib)
        if calib is not None:
            report[method]["calibration"] = {"samples": calib.samples, "tokens": calib.tokens}
    return model, report
