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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.artifacts import read_json, write_json
from lmforge.compression import bf16, dynamic_int8, lowrank, onnx_int8
from lmforge.compression.model_class import save_config
from lmforge.config import QuantizeConfig
from lmforge.errors import ConfigError, LmforgeError
from lmforge.modeling import arch
from lmforge.modeling.io import QUANTIZED_MANIFEST, QUANTIZED_METHODS, method_of

MANIFEST_FILE = QUANTIZED_MANIFEST


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
                     extra: dict[str, Any]) -> dict[str, Any]:
    fp32 = out_dir / "fp32.onnx.tmp"
    onnx_int8.export_onnx(model, fp32, max_len=context_length(model))
    try:
        report = onnx_int8.quantize_onnx(fp32, out_dir / onnx_int8.MODEL_FILE, per_channel=cfg.per_channel,
                                         calibration_blocks=calibration_blocks[: cfg.calibration_blocks],
                                         block_size=cfg.block_size)
    finally:
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
    extra = {"base_model": {"model_type": model.config.model_type}}
    if layers := lowrank.layout(model):  # a low-rank pruned model: its loader rebuilds the factors first
        extra["factored"] = layers
    return METHODS[cfg.method].write(model, out_dir, cfg, calibration_blocks, extra)


def context_length(model: nn.Module) -> int:
    return int(arch.context_length(model.config) or 2048)


def load_quantized(path: str | Path, threads: int | None = None) -> Any:
    """Load any folder written by the quantize stage, in its own runtime (ONNX: an ORT session with
    `threads` intra-op threads; int8 torch: dynamic-quantized modules; bf16: a bf16 model)."""
    path = Path(path)
    return METHODS[method_of(path)].load(path, threads, read_json(path / MANIFEST_FILE))
