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
from lmforge.errors import ConfigError

UNSTRUCTURED = ("l1_unstructured", "wanda")
KEYS = {"l1_unstructured": ("amount",), "wanda": ("amount", "n_m"), "structured": ("heads", "ffn", "layers"),
        "lowrank": ("rank_ratio", "energy", "activation_aware")}


def needs_calibration(cfg: PruneConfig, method: str) -> bool:
    return method in ("wanda", "structured") or (method == "lowrank" and bool(cfg.activation_aware))


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"invalid value for 'prune.{key}': {value!r} (expected {expected})")


def check(cfg: PruneConfig, model: nn.Module) -> None:
    """Every configuration error of the prune section for this model, before any work."""
    methods = cfg.method
    if any(m not in PRUNE_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise _fail("method", methods, "a list of distinct methods from " + ", ".join(PRUNE_METHODS)
                    + " ([] prunes nothing: prune=none)")
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    for a, b in pairs:
        if a in UNSTRUCTURED and b in UNSTRUCTURED:
            raise ConfigError(f"prune.method: {a} and {b} cannot be combined: both zero weights of the same "
                              "layers; choose one")
        if {a, b} & set(UNSTRUCTURED) and "lowrank" in (a, b):
            other = a if a != "lowrank" else b
            raise ConfigError(f"prune.method: {other} and lowrank cannot be combined: the SVD factors of a "
                              "sparse matrix are dense, and masks on factors are not the method's masks")
        if b == "structured":
            raise ConfigError(f"prune.method: structured must come before {a} ([structured, {a}]): it rebuilds "
                              f"the model from dense weights, so it would undo {a}")
    used = {key for m in methods for key in KEYS[m]}
    for key in sorted({k for keys in KEYS.values() for k in keys} - used):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"'prune.{key}' is {getattr(cfg, key)!r} but prune.method {methods} does not use "
                              "it (set it to null, or select the method that does)")
    if set(methods) & set(UNSTRUCTURED):
        _check_unstructured(cfg, methods, model)
    if "structured" in methods:
        if not any((cfg.heads, cfg.ffn, cfg.layers)):
            raise ConfigError("prune.method structured: prune.heads, prune.ffn and prune.layers are all 0 or "
                              "null: nothing to remove")
        structured_method.family(model.config.model_type, cfg.heads)
    if "lowrank" in methods:
        if (cfg.rank_ratio is None) == (cfg.energy is None):
            raise ConfigError(f"prune.method lowrank: set exactly one of 'prune.rank_ratio' ({cfg.rank_ratio!r}) "
                              f"and 'prune.energy' ({cfg.energy!r})")
        if cfg.activation_aware is None:
            raise _fail("activation_aware", None, "true or false with prune.method lowrank")


def _check_unstructured(cfg: PruneConfig, methods: list[str], model: nn.Module) -> None:
    if "wanda" in methods and cfg.n_m is not None:
        if cfg.amount is not None:
            raise ConfigError(f"prune.method wanda: 'prune.amount' ({cfg.amount}) and 'prune.n_m' ({cfg.n_m}) "
                              "both set; N:M fixes the sparsity at 1 - N/M, set prune.amount to null")
        if len(cfg.n_m) != 2 or not 0 < cfg.n_m[0] < cfg.n_m[1]:
            raise _fail("n_m", cfg.n_m, "[N, M] with 0 < N < M, e.g. [2, 4]")
        m = cfg.n_m[1]
        widths = {name: getattr(mod, "nx", None) or mod.in_features
                  for name, mod in linear_layers(model, blocks_only=True).items()}
        bad = {name: w for name, w in widths.items() if w % m}
        if bad:
            name, width = next(iter(bad.items()))
            raise _fail("n_m", cfg.n_m, f"M dividing every layer's input width; {name} has {width} inputs")
    elif cfg.amount is None:
        raise _fail("amount", None, f"a fraction > 0 and < 1 with prune.method {methods}")


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
