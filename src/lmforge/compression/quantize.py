"""The quantize methods behind one interface, and the loader of any quantized folder.

One module per backend:
    dynamic_int8   torch dynamic int8 of the linear layers; safetensors + JSON, its own loader
    onnx_int8      ONNX export, ONNX Runtime int8 (dynamic, or static QDQ), run by an InferenceSession
    bf16           weights stored and run in bfloat16; a plain save_pretrained folder

Every folder carries quantization.json (method, coverage, ...); `load_quantized` reads it and returns a
model with the interface of lmforge's metrics (`model(input_ids=, attention_mask=).logits`), of the class the
input had: a causal LM, a BERT MLM, or a classifier whose logits are (batch, labels).
The stage itself (load -> quantize -> check -> save atomically -> metrics) is stages/quantize.py.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.artifacts import read_json, write_json
from lmforge.compression import bf16, dynamic_int8, lowrank, onnx_int8
from lmforge.compression.model_class import save_config
from lmforge.config import QUANTIZE_CANDIDATES, QuantizeConfig
from lmforge.config.rules import check_quantize
from lmforge.errors import ConfigError, LmforgeError
from lmforge.modeling import arch
from lmforge.modeling.io import QUANTIZED_MANIFEST, QUANTIZED_METHODS, method_of

MANIFEST_FILE = QUANTIZED_MANIFEST
DEFAULT_BLOCK_SIZE = 32  # the blockwise candidate's block, where quantize.block_size is null
log = logging.getLogger(__name__)


class QuantizationError(LmforgeError):
    """The quantized model does not meet the configured requirements (coverage)."""


def check_config(cfg: QuantizeConfig) -> None:
    """Options that only one method understands, refused before any work."""
    if cfg.calibration_blocks and cfg.method != "onnx_int8":
        raise ConfigError(f"invalid value for 'quantize.calibration_blocks': {cfg.calibration_blocks} "
                          f"(static calibration is for method onnx_int8; {cfg.method} needs 0)")
    if cfg.block_size is not None:
        if cfg.method != "onnx_int8":
            raise ConfigError(f"invalid value for 'quantize.block_size': {cfg.block_size} "
                              f"(blockwise quantization is for method onnx_int8; {cfg.method} needs null)")
        if cfg.block_size & (cfg.block_size - 1):
            raise ConfigError(f"invalid value for 'quantize.block_size': {cfg.block_size} "
                              "(expected a power of 2 from 16 to 256, as ORT's MatMulNBits requires)")
        if cfg.calibration_blocks:
            raise ConfigError(f"invalid value for 'quantize.calibration_blocks': {cfg.calibration_blocks} "
                              "(blockwise activations are quantized at run time; with quantize.block_size set, "
                              "expected 0)")
    check_quantize(cfg)  # and the candidates' keys (lmforge.config.rules, as the validate stage does)


def _write_manifest(out_dir: Path, cfg: QuantizeConfig, report: dict[str, Any], extra: dict[str, Any]) -> None:
    write_json(out_dir / MANIFEST_FILE, {"format_version": 1, "method": cfg.method, "per_channel": cfg.per_channel,
                                         "block_size": cfg.block_size, "coverage": report, **extra})


def _write_dynamic_int8(model: nn.Module, out_dir: Path, cfg: QuantizeConfig, calibration_blocks: Sequence,
                        extra: dict[str, Any]) -> dict[str, Any]:
    quantized, report = dynamic_int8.quantize_dynamic_int8(model, per_channel=cfg.per_channel,
                                                           include_lm_head=cfg.include_lm_head)
    dynamic_int8.save_quantized(quantized, out_dir, manifest={  # its manifest also lists the int8 modules
        "method": cfg.method, "per_channel": cfg.per_channel, "include_lm_head": cfg.include_lm_head,
        "coverage": report, **extra})
    return report


def _write_onnx_int8(model: nn.Module, out_dir: Path, cfg: QuantizeConfig, calibration_blocks: Sequence,
                     extra: dict[str, Any], fallback: tuple[Sequence, int] | None = None,
                     exported: Path | None = None) -> dict[str, Any]:
    """`fallback` (calibration blocks, k): the k MatMuls of largest own int8 error stay fp32 (fp32_fallback).
    `exported`: the model's fp32 ONNX export, already made (candidates share one; kept); else exported here."""
    fp32 = exported or out_dir / "fp32.onnx.tmp"
    if exported is None:
        onnx_int8.export_onnx(model, fp32, max_len=context_length(model))
    nodes_to_exclude: list[str] = []
    try:
        if fallback:
            errors = onnx_int8.matmul_errors(fp32, fallback[0])
            nodes_to_exclude = list(errors)[: fallback[1]]
            extra = {**extra, "fp32_fallback": {name: round(errors[name], 5) for name in nodes_to_exclude}}
        report = onnx_int8.quantize_onnx(fp32, out_dir / onnx_int8.MODEL_FILE, per_channel=cfg.per_channel,
                                         calibration_blocks=calibration_blocks[: cfg.calibration_blocks],
                                         block_size=cfg.block_size, nodes_to_exclude=nodes_to_exclude)
    finally:
        if exported is None:
            fp32.unlink(missing_ok=True)
    save_config(model, out_dir)  # the shape and class, for the loader and evaluate (read as JSON)
    # the weight bits and why (this CPU's VNNI): the loader's ORT session takes its U8U8 option from them
    _write_manifest(out_dir, cfg, report, {**extra, "int8_weights": report["int8_weights"]})
    return report


def _write_bf16(model: nn.Module, out_dir: Path, cfg: QuantizeConfig, calibration_blocks: Sequence,
                extra: dict[str, Any]) -> dict[str, Any]:
    quantized, report = bf16.to_bf16(model)
    bf16.save(quantized, out_dir)
    _write_manifest(out_dir, cfg, report, extra)
    return report


@dataclass(frozen=True)
class Method:
    """A quantize method: `write(model, out_dir, cfg, calibration_blocks, extra)` writes its folder (weights and
    quantization.json, `extra` added to it) and returns the coverage report; `load(folder, threads, manifest)`
    returns the model in the method's own runtime."""

    write: Callable[[nn.Module, Path, QuantizeConfig, Sequence, dict[str, Any]], dict[str, Any]]
    load: Callable[[Path, int | None, dict[str, Any]], Any]


METHODS: dict[str, Method] = {
    "dynamic_int8": Method(_write_dynamic_int8, lambda path, threads, manifest: dynamic_int8.load_quantized(path)),
    "onnx_int8": Method(_write_onnx_int8, lambda path, threads, manifest: onnx_int8.OnnxModel(path, threads=threads)),
    "bf16": Method(_write_bf16, lambda path, threads, manifest: bf16.load(path, manifest.get("factored"))),
}
if tuple(METHODS) != QUANTIZED_METHODS:  # modeling.io, a layer below, names the methods a folder may hold
    raise RuntimeError(f"quantize methods {tuple(METHODS)} differ from modeling.io.QUANTIZED_METHODS")


def quantize_to(model: nn.Module, out_dir: Path, cfg: QuantizeConfig, *,
                calibration_blocks: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """Quantize `model` (left as it is) by `cfg.method` and write the folder `out_dir` (without the
    tokenizer); returns the coverage report, also stored in the manifest."""
    return METHODS[cfg.method].write(model, out_dir, cfg, calibration_blocks, _extra(model))


@dataclass
class Candidate:
    """One quantize.candidates variant, built into its own folder and measured."""

    name: str
    folder: Path
    model: nn.Module  # the torch model it was exported from (smoothed for `smooth`): the task model's source
    cfg: QuantizeConfig  # per_channel / block_size as the candidate used them
    report: dict[str, Any]  # coverage report
    loaded: Any = None  # the folder loaded in its runtime (what was measured)
    measured: dict[str, Any] | None = None  # val_loss, val_accuracy, ms_per_review (the stage's measure)


def build_candidate(name: str, model: nn.Module, folder: Path, cfg: QuantizeConfig,
                    calibration_blocks: Sequence[Sequence[int]], exported: Path | None = None) -> Candidate:
    """Write candidate `name` (lmforge.config.QUANTIZE_CANDIDATES) of `model` into `folder` (onnx_int8).
    `exported`: `model`'s fp32 ONNX export, shared by the candidates that quantize the model as it is."""
    from lmforge.compression import smooth

    folder.mkdir(parents=True, exist_ok=True)
    variant = replace(cfg, per_channel=True, block_size=None, calibration_blocks=0, candidates=None)
    extra: dict[str, Any] = {"candidate": name}
    fallback = None
    if name == "blockwise":
        variant = replace(variant, block_size=cfg.block_size or DEFAULT_BLOCK_SIZE)
    elif name == "smooth":
        model = copy.deepcopy(model)
        extra["smooth"] = smooth.smooth(model, calibration_blocks, alpha=cfg.smooth_alpha)
        exported = None  # another function's weights: its own export
    elif name == "fp32_fallback":
        fallback = (calibration_blocks, cfg.fallback_layers)
    elif name != "per_channel":
        raise ConfigError(f"invalid value for 'quantize.candidates': {name!r} (expected one of "
                          f"{', '.join(QUANTIZE_CANDIDATES)})")
    extra.update(_extra(model))
    report = _write_onnx_int8(model, folder, variant, (), extra, fallback=fallback, exported=exported)
    return Candidate(name, folder, model, variant, report)


def choose_candidate(model: nn.Module, root: Path, cfg: QuantizeConfig, *, calibration_blocks: Sequence,
                     input_accuracy: float, measure: Callable[[Any], dict[str, Any]]
                     ) -> tuple[Candidate, dict[str, Any]]:
    """Build every `cfg.candidates` variant under `root/<name>`, measure each (`measure(loaded model)` ->
    val_loss, val_accuracy, ms_per_review) and keep the fastest whose validation accuracy is within
    `cfg.max_accuracy_drop` of `input_accuracy` and whose coverage meets `cfg.min_coverage`; if none is, the
    most accurate (the log and the record say so). Returns the chosen one and the record for the metrics."""
    from lmforge.compression import smooth
    from lmforge.modeling.io import weights_bytes

    built: list[Candidate] = []
    skipped: dict[str, str] = {}
    exported = root / "fp32.onnx.tmp"
    for name in cfg.candidates or ():
        if name == "smooth" and not smooth.supports(model):
            skipped[name] = (f"smoothing supports {', '.join(smooth.PAIRS)}, not {model.config.model_type} "
                             "(lmforge.compression.smooth)")
            log.info("candidate smooth skipped: %s", skipped[name])
            continue
        started = time.perf_counter()
        if name != "smooth" and not exported.is_file():  # one fp32 export serves every unsmoothed candidate
            onnx_int8.export_onnx(model, exported, max_len=context_length(model))
        candidate = build_candidate(name, model, root / name, cfg, calibration_blocks, exported=exported)
        candidate.loaded = load_quantized(candidate.folder)
        candidate.measured = {**measure(candidate.loaded), "weights_bytes": weights_bytes(candidate.folder),
                              "coverage": round(candidate.report["coverage"], 4),
                              "build_and_measure_s": round(time.perf_counter() - started, 1)}
        built.append(candidate)
        log.info("candidate %s: accuracy %.4f (input %.4f), loss %.4f, %.2f ms per review, %d bytes", name,
                 candidate.measured["val_accuracy"], input_accuracy, candidate.measured["val_loss"],
                 candidate.measured["ms_per_review"], candidate.measured["weights_bytes"])
    if not built:
        raise QuantizationError(f"no quantize.candidates could be built ({skipped}); add per_channel to "
                                "quantize.candidates")

    exported.unlink(missing_ok=True)
    name, why, qualified = select({c.name: c.measured for c in built}, input_accuracy, cfg)
    chosen = next(c for c in built if c.name == name)
    (log.info if qualified[name] else log.warning)("quantize.candidates: %s chosen (%s)", name, why)
    record = {"chosen_candidate": name, "choice": why, "max_accuracy_drop": cfg.max_accuracy_drop,
              "candidates": {c.name: {**c.measured, "qualified": qualified[c.name], "chosen": c is chosen}
                             for c in built},
              **({"skipped_candidates": skipped} if skipped else {})}
    return chosen, record


def select(measured: dict[str, dict[str, Any]], input_accuracy: float, cfg: QuantizeConfig
           ) -> tuple[str, str, dict[str, bool]]:
    """The rule of quantize.candidates on the measurements {name: val_accuracy, val_loss, ms_per_review,
    coverage}: the fastest candidate whose coverage meets min_coverage, whose loss is finite and whose accuracy is
    at most max_accuracy_drop below the input's; if none is, the most accurate (then the lower loss).
    Returns (name, why, {name: qualified})."""
    qualified = {name: (m["coverage"] >= cfg.min_coverage and math.isfinite(m["val_loss"])
                        and input_accuracy - m["val_accuracy"] <= cfg.max_accuracy_drop + 1e-9)
                 for name, m in measured.items()}
    if any(qualified.values()):
        name = min((n for n in measured if qualified[n]), key=lambda n: measured[n]["ms_per_review"])
        return name, (f"fastest of {sum(qualified.values())} within quantize.max_accuracy_drop "
                      f"{cfg.max_accuracy_drop} of the input's accuracy {input_accuracy:.4f}"), qualified
    covered = [n for n in measured if measured[n]["coverage"] >= cfg.min_coverage] or list(measured)
    name = max(covered, key=lambda n: (measured[n]["val_accuracy"], -measured[n]["val_loss"]))
    return name, (f"none within quantize.max_accuracy_drop {cfg.max_accuracy_drop} of the input's accuracy "
                  f"{input_accuracy:.4f} (or all below quantize.min_coverage): the most accurate kept"), qualified


def _extra(model: nn.Module) -> dict[str, Any]:
    extra: dict[str, Any] = {"base_model": {"model_type": model.config.model_type}}
    if layers := lowrank.layout(model):  # a low-rank pruned model: its loader rebuilds the factors first
        extra["factored"] = layers
    return extra


def context_length(model: nn.Module) -> int:
    return int(arch.context_length(model.config) or 2048)


def load_quantized(path: str | Path, threads: int | None = None) -> Any:
    """Load any folder written by the quantize stage, in its own runtime (ONNX: an ORT session with
    `threads` intra-op threads; int8 torch: dynamic-quantized modules; bf16: a bf16 model)."""
    path = Path(path)
    return METHODS[method_of(path)].load(path, threads, read_json(path / MANIFEST_FILE))
