"""Dynamic INT8 quantization on CPU, saved without pickle, with its own loader.

Weights of the linear layers are stored as int8 (per output channel or per tensor); activations are
quantized on the fly at each matmul. `torch.ao.quantization.quantize_dynamic` only swaps `nn.Linear`,
so GPT-2's Conv1D layers are converted to `nn.Linear` first; otherwise only the LM head would be
quantized. Every kind of model of the chain is handled (lmforge.modeling.family): causal LMs, BERT
encoders with their MLM head, and `*ForSequenceClassification` classifiers, whose head (`score`,
`classifier`) and BERT's pooler are quantized with the blocks; the folder loads back as the same class.

Saved folder (models/quantized), read by `load_quantized` (safetensors and JSON only):
    config.json              the fp32 architecture and its class (`architectures`, see model_class)
    model_int8.safetensors   float tensors of the model under their state_dict names (embeddings,
                             layer norms, ...), and for each quantized linear `<name>`:
                             `<name>.weight.int8` (int8), `<name>.weight.scales` (float64),
                             `<name>.weight.zero_points` (int64), `<name>.weight.axis` (per channel
                             only, 0-d int64) and `<name>.bias` (float, when the layer has one)
    quantization.json        manifest: format_version, method, per_channel, modules (name, scheme,
                             bias), coverage, base model reference
    tokenizer files          saved by the caller
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
from transformers import AutoConfig

from lmforge.artifacts import read_json, write_json
from lmforge.compression.linear import conv1d_to_linear, linear_layers
from lmforge.compression.lowrank import refactor
from lmforge.compression.model_class import save_config
from lmforge.errors import DataError, missing_input, rerun_hint
from lmforge.modeling.checks import check_finite
from lmforge.modeling.family import new_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METHOD = "dynamic_int8"
MANIFEST_FILE = "quantization.json"
# Not model.safetensors: `from_pretrained` on this folder must fail rather than load int8 tensors as fp32.
WEIGHTS_FILE = "model_int8.safetensors"
PER_CHANNEL, PER_TENSOR = "per_channel", "per_tensor"


# --------------------------------------------------------------------------------------------------
# Quantization and coverage
# --------------------------------------------------------------------------------------------------


def _output_layer_name(model: nn.Module) -> str | None:
    head = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is head), None)


def _quantize_modules(model: nn.Module, schemes: dict[str, str]) -> None:
    """Swap the named nn.Linear modules of `model` in place for dynamic int8 ones."""
    qconfigs = {PER_CHANNEL: per_channel_dynamic_qconfig, PER_TENSOR: default_dynamic_qconfig}
    quantize_dynamic(model, {name: qconfigs[scheme] for name, scheme in schemes.items()},
                     dtype=torch.qint8, inplace=True)


def _quantized_linears(model: nn.Module) -> dict[str, DynamicQuantizedLinear]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, DynamicQuantizedLinear)}


def _coverage(model: nn.Module, linear_params: dict[str, int], per_channel: bool) -> dict[str, Any]:
    """Which linear-like layers of `model` really hold int8 weights, weighted by parameter count."""
    modules = []
    for name, params in linear_params.items():
        module = model.get_submodule(name)
        if isinstance(module, DynamicQuantizedLinear):
            dtype = module.weight().dtype
        else:
            dtype = module.weight.dtype
        modules.append({"name": name, "params": params, "dtype": str(dtype).removeprefix("torch.")})
    int8_params = sum(m["params"] for m in modules if m["dtype"] == "qint8")
    total = sum(linear_params.values())
    return {
        "coverage": int8_params / total if total else 0.0,
        "int8_params": int8_params,
        "linear_params": total,
        "dtype": "qint8",
        "per_channel": per_channel,
        "modules": modules,
    }


def quantize_dynamic_int8(model: nn.Module, *, per_channel: bool,
                          include_lm_head: bool) -> tuple[nn.Module, dict[str, Any]]:
    """A dynamic-int8 copy of `model` (the input is left as it is) and its coverage report.

    Every linear layer (Conv1D converted to nn.Linear first) is quantized except the LM head, which is
    quantized only if `include_lm_head`; the head's tied embedding stays fp32. Besides the blocks that
    is a classifier's head and BERT's pooler and MLM transform (a causal LM has no other linear layer).
    Coverage = int8 weights / weights of all linear-like layers of the model, LM head included,
    measured on the quantized model.
    """
    model = conv1d_to_linear(copy.deepcopy(model)).eval()
    linears = linear_layers(model, blocks_only=False)
    linear_params = {name: m.weight.numel() for name, m in linears.items()}
    head = _output_layer_name(model)  # None for a classifier: its `score` / `classifier` is no LM head
    targets = [name for name, m in linears.items() if isinstance(m, nn.Linear) and name != head]
    if include_lm_head and head is not None and isinstance(model.get_submodule(head), nn.Linear):
        targets.append(head)
    _quantize_modules(model, dict.fromkeys(targets, PER_CHANNEL if per_channel else PER_TENSOR))
    return model, _coverage(model, linear_params, per_channel)


# --------------------------------------------------------------------------------------------------
# Saving and loading (safetensors + JSON, no pickle)
# --------------------------------------------------------------------------------------------------


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict entries outside the quantized layers, each storage once (tied: under its first name)."""
    quantized = tuple(f"{name}." for name in _quantized_linears(model))
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if key.startswith(quantized) or not isinstance(value, torch.Tensor):
            continue
        if value.numel() and value.data_ptr() in seen:  # lm_head.weight tied to wte: the loader re-ties it
            continue
        seen.add(value.data_ptr())
        state[key] = value
    return state


def _weight_scheme(weight: torch.Tensor) -> str:
    per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    return PER_CHANNEL if per_channel else PER_TENSOR


def save_quantized(model: nn.Module, out_dir: str | Path, *, manifest: dict[str, Any]) -> None:
    """Write a dynamic-quantized model as config.json + model_int8.safetensors + quantization.json.

    `manifest` (method, coverage, base model reference, ...) is stored in quantization.json, with the
    format version and the list of quantized modules added here.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = dict(_float_state(model))
    modules = []
    for name, module in _quantized_linears(model).items():
        weight = module.weight()
        scheme = _weight_scheme(weight)
        tensors[f"{name}.weight.int8"] = weight.int_repr()
        if scheme == PER_CHANNEL:
            tensors[f"{name}.weight.scales"] = weight.q_per_channel_scales()
            tensors[f"{name}.weight.zero_points"] = weight.q_per_channel_zero_points()
            tensors[f"{name}.weight.axis"] = torch.tensor(weight.q_per_channel_axis())
        else:
            tensors[f"{name}.weight.scales"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            tensors[f"{name}.weight.zero_points"] = torch.tensor(weight.q_zero_point())
        bias = module.bias()
        if bias is not None:
            # a copy: packing keeps the bias's storage, which a float tensor may share (BERT's MLM decoder
            # bias is `cls.predictions.bias`), and safetensors refuses two names for one storage
            tensors[f"{name}.bias"] = bias.detach().clone()
        modules.append({"name": name, "scheme": scheme, "bias": bias is not None})
    save_file({key: value.contiguous() for key, value in tensors.items()}, out_dir / WEIGHTS_FILE,
              # one key: safetensors keeps metadata in a Rust HashMap, so with two keys their order (and the
              # file's bytes) changed from run to run; the version is also in quantization.json
              metadata={"format": f"lmforge-dynamic-int8-v{FORMAT_VERSION}"})
    write_json(out_dir / MANIFEST_FILE, {"format_version": FORMAT_VERSION, **manifest,
                                         "weights_file": WEIGHTS_FILE, "modules": modules})
    save_config(model, out_dir)  # with the class, so a classifier loads back as one


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: missing; {path} is not a quantized model folder of lmforge")
    try:
        manifest = read_json(manifest_path)
    except ValueError as exc:
        raise DataError(f"{manifest_path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise DataError(f"{manifest_path}: format_version {version!r}, this loader reads {FORMAT_VERSION}")
    modules = manifest.get("modules")
    if (manifest.get("method") != METHOD or not isinstance(modules, list)
            or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                       and m.get("scheme") in (PER_CHANNEL, PER_TENSOR) and isinstance(m.get("bias"), bool)
                       for m in modules)):
        raise DataError(f"{manifest_path}: expected method '{METHOD}' and a list of modules "
                        "with name, scheme (per_channel/per_tensor) and bias")
    return manifest


def _quantized_weight(tensors: dict[str, torch.Tensor], name: str, scheme: str) -> torch.Tensor:
    int8, scales, zero_points = (tensors[f"{name}.weight.{part}"]
                                 for part in ("int8", "scales", "zero_points"))
    if scheme == PER_CHANNEL:
        axis = int(tensors[f"{name}.weight.axis"])
        return torch._make_per_channel_quantized_tensor(int8, scales, zero_points, axis)
    return torch._make_per_tensor_quantized_tensor(int8, float(scales), int(zero_points))


def load_quantized(path: str | Path) -> nn.Module:
    """Load a model written by `save_quantized`; reads only JSON and safetensors.

    Rebuilds the fp32 architecture from config.json (its class by `family.auto_class`: causal LM,
    masked LM or classifier), converts Conv1D to nn.Linear, swaps the modules
    listed in the manifest for dynamic int8 ones, then fills every tensor from the safetensors file.
    Raises DataError naming the file if anything is missing or does not match.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    config_path, weights_path = path / "config.json", path / manifest.get("weights_file", WEIGHTS_FILE)
    for required in (config_path, weights_path):
        if not required.is_file():
            raise DataError(f"{required}: missing from the quantized model folder {path}")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{config_path}: cannot be read as a model config: {exc}") from exc

    # a low-rank pruned model's factors (lmforge.compression.lowrank) are rebuilt before their linears are found
    model = refactor(conv1d_to_linear(new_model(config)), manifest.get("factored", []), path / MANIFEST_FILE).eval()
    specs = {m["name"]: m for m in manifest["modules"]}
    linears = linear_layers(model, blocks_only=False)
    unknown = [name for name in specs if not isinstance(linears.get(name), nn.Linear)]
    if unknown:
        raise DataError(f"{path / MANIFEST_FILE}: modules not linear layers of the {config.model_type} "
                        f"architecture in {config_path}: {', '.join(unknown)}")
    _quantize_modules(model, {name: spec["scheme"] for name, spec in specs.items()})

    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as exc:
        raise missing_input(weights_path, f"cannot be read as safetensors: {exc}") from exc
    check_finite(tensors, f"{weights_path} ({rerun_hint(weights_path)})")
    floats = _float_state(model)
    expected = set(floats)
    for name, spec in specs.items():
        expected |= {f"{name}.weight.{part}" for part in ("int8", "scales", "zero_points")}
        expected |= {f"{name}.weight.axis"} if spec["scheme"] == PER_CHANNEL else set()
        expected |= {f"{name}.bias"} if spec["bias"] else set()
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise DataError(f"{weights_path}: does not match {path / MANIFEST_FILE} and {config_path}: "
                        f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")

    with torch.no_grad():
        for key, target in floats.items():
            if tensors[key].shape != target.shape:
                raise DataError(f"{weights_path}: '{key}' has shape {tuple(tensors[key].shape)}, "
                                f"the architecture expects {tuple(target.shape)}")
            target.copy_(tensors[key])
        for name, module in _quantized_linears(model).items():
            weight = _quantized_weight(tensors, name, specs[name]["scheme"])
            has_bias = module.bias() is not None
            if (weight.dtype != torch.qint8 or weight.shape != module.weight().shape
                    or has_bias != specs[name]["bias"]):
                raise DataError(f"{weights_path}: '{name}' does not match the architecture in {config_path}")
            module.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return model
