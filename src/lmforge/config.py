"""Typed, validated views of params.yaml.

params.yaml is the Hydra composition of conf/ (see `lmforge.compose`). Each stage reads only the
sections it needs and validates each against a dataclass schema below *before* doing any work: an
unknown key, a missing key, a value of the wrong type or out of range stops the stage with a
message naming the key, the value and what is allowed.

Schemas carry no defaults on purpose: conf/ is the single source of truth for values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from lmforge.errors import ConfigError

PARAMS_FILE = "params.yaml"
T = TypeVar("T")


def spec(*, ge: float | None = None, le: float | None = None, gt: float | None = None,
         lt: float | None = None, choices: tuple | None = None) -> Any:
    """A schema field with bounds or allowed values (checked by `parse_section`)."""
    return field(metadata={"ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices})


# --------------------------------------------------------------------------------------------------
# Schemas, one per params.yaml section
# --------------------------------------------------------------------------------------------------


@dataclass
class CorpusConfig:
    """One real corpus, read by `datasets.load_dataset(path, name, data_files=..., split=...)`.

    data=local: `path` is a builder (text, csv, tsv, json, parquet) and `files` / `label_files` are
    globs relative to the repository root. data=hub: `path` is a dataset name and `name` its config.
    """

    path: str = spec()  # builder (text|csv|tsv|json|jsonl|parquet) or hub dataset name
    name: str | None = spec()  # hub dataset config, e.g. wikitext-103-raw-v1
    files: list[str] = spec()  # globs, all pooled; lmforge splits train/validation/test itself
    label_files: list[str] = spec()  # one glob per label, in label_words order (rt-polarity layout)
    splits: list[str] = spec()  # source splits read and pooled, e.g. [train, test]
    sample_by: str = spec(choices=("line", "paragraph", "document"))  # text builder: one doc per ...
    encoding: str = spec()  # text / csv / tsv files
    text_column: str = spec()
    label_column: str | None = spec()  # task corpus without label_files
    label_values: list[str] = spec()  # raw label of each class, in label_words order (compared as text)
    detokenize: str = spec(choices=("none", "wikitext"))  # undo tokenised text (WikiText's " @-@ ")


@dataclass
class DataConfig:
    source: str = spec(choices=("synthetic", "local", "hub"))
    raw: str = spec()  # what dvc.yaml's preprocess depends on: data/raw (local) or the generator's code
    # synthetic: documents generated; local / hub: at most this many read (null: all)
    general_docs: int | None = spec(ge=10)  # documents of the general corpus
    domain_docs: int | None = spec(ge=10)  # unlabelled reviews (domain language modelling)
    task_examples: int | None = spec(ge=20)  # labelled reviews (downstream task)
    general: CorpusConfig | None = spec()  # local / hub only
    domain: CorpusConfig | None = spec()  # null with domain_from_task
    task: CorpusConfig | None = spec()
    domain_from_task: float | None = spec(gt=0.0, lt=1.0)  # share of task reviews used, unlabelled, as domain
    streaming: bool = spec()  # local / hub: read lazily, stop after *_docs (corpora larger than memory)


@dataclass
class PreprocessConfig:
    tokenizer: str = spec(choices=("train", "base"))  # train a BPE, or reuse models/base's tokenizer
    vocab_size: int = spec(ge=300, le=1_000_000)  # tokenizer=train only
    block_size: int = spec(ge=8, le=8192)
    val_fraction: float = spec(gt=0.0, lt=0.5)
    test_fraction: float = spec(gt=0.0, lt=0.5)
    min_chars: int = spec(ge=1)  # documents shorter than this after cleaning are dropped
    max_chars: int | None = spec(ge=1)  # documents longer than this are dropped (null: no limit)
    dedupe: str = spec(choices=("exact", "normalized"))  # normalized: case, punctuation, spacing ignored
    num_proc: int = spec(ge=1, le=256)  # processes for task-example tokenisation (packing: tokenizer threads)
    prompt: str = spec()  # appended to every review, before the label word
    label_words: list[str] = spec()  # index = label id; each must be exactly one token


@dataclass
class ModelConfig:
    # scratch: a GPT-2 of the shape below. pretrained: the checkpoint's own architecture (its model_type
    # must equal arch), with n_layer .. dropout ignored; see lmforge.modeling.pretrained.
    arch: str = spec(choices=("gpt2", "llama"))
    init: str = spec(choices=("scratch", "pretrained"))
    name_or_path: str | None = spec()  # pretrained: hub name or local save_pretrained folder
    gguf_file: str | None = spec()  # pretrained: a .gguf path, or pkg://<package>/<file>
    n_layer: int = spec(ge=1, le=96)
    n_head: int = spec(ge=1, le=128)
    n_embd: int = spec(ge=8, le=16384)
    n_positions: int = spec(ge=8, le=131072)
    dropout: float = spec(ge=0.0, lt=1.0)


@dataclass
class StudentConfig:
    n_layer: int = spec(ge=1, le=96)
    n_head: int | None = spec(ge=1, le=128)  # null: the teacher's (other than GPT-2: must be the teacher's)
    n_embd: int | None = spec(ge=8, le=16384)  # null: the teacher's (other than GPT-2: must be the teacher's)
    init_from_teacher: bool = spec()  # copy embeddings and alternate blocks where shapes match


@dataclass
class MixtureConfig:
    """Sampling weights of the multi-task mixture; they need not sum to one."""

    domain: float = spec(ge=0.0)
    task: float = spec(ge=0.0)
    general: float = spec(ge=0.0)  # replay of the general corpus, against forgetting


@dataclass
class TrainConfig:
    max_steps: int = spec(ge=1)
    batch_size: int = spec(ge=1)
    grad_accum_steps: int = spec(ge=1)
    learning_rate: float = spec(gt=0.0, le=1.0)
    lr_scheduler: str = spec(choices=("cosine", "linear", "constant_with_warmup"))
    warmup_steps: int = spec(ge=0)
    weight_decay: float = spec(ge=0.0, le=1.0)
    max_grad_norm: float = spec(gt=0.0)
    logging_steps: int = spec(ge=1)
    eval_steps: int = spec(ge=1)
    save_steps: int = spec(ge=1)  # checkpoints for resuming a killed run
    eval_max_examples: int = spec(ge=1)  # cap on validation examples per evaluation
    # Speed switches (GPU); the defaults are the CPU's best: fp32, SDPA attention, plain AdamW, eager mode.
    precision: str = spec(choices=("fp32", "bf16"))  # bf16: autocast mixed precision (slow on CPUs without bf16 units)
    attn_implementation: str = spec(choices=("sdpa", "eager", "flash_attention_2"))
    optim: str = spec(choices=("adamw_torch", "adamw_torch_fused"))
    torch_compile: bool = spec()


@dataclass
class FinetuneConfig(TrainConfig):
    mixture: MixtureConfig = spec()


@dataclass
class DistillConfig(FinetuneConfig):
    temperature: float = spec(gt=0.0, le=100.0)
    alpha_kd: float = spec(ge=0.0)
    alpha_ce: float = spec(ge=0.0)


@dataclass
class RecoveryConfig:
    """Short KD fine-tuning from the teacher after pruning, with the masks held fixed."""

    max_steps: int = spec(ge=0)  # 0: no recovery
    batch_size: int = spec(ge=1)
    learning_rate: float = spec(gt=0.0, le=1.0)
    temperature: float = spec(gt=0.0, le=100.0)
    alpha_kd: float = spec(ge=0.0)
    alpha_ce: float = spec(ge=0.0)
    mixture: MixtureConfig = spec()


@dataclass
class PruneConfig:
    method: str = spec(choices=("l1_unstructured",))
    amount: float = spec(ge=0.0, lt=1.0)  # fraction of each block layer's weights set to zero
    recovery: RecoveryConfig = spec()


@dataclass
class QuantizeConfig:
    method: str = spec(choices=("dynamic_int8",))
    per_channel: bool = spec()  # one scale per output channel rather than per tensor
    include_lm_head: bool = spec()
    min_coverage: float = spec(ge=0.0, le=1.0)  # int8 linear parameters / all linear parameters


@dataclass
class ExternalSetConfig:
    """A labelled test set that is not a split of the training corpora (evaluate.external)."""

    name: str = spec()  # a short identifier: the key in metrics/evaluate.json and the report's column
    source: str = spec(choices=("local", "hub"))  # as data.source: files through a builder, or a hub dataset
    max_examples: int | None = spec(ge=1)  # read at most this many (null: all)
    corpus: CorpusConfig = spec()  # described like data.task: path, files or label_files, columns, label_values


@dataclass
class EvaluateConfig:
    models: list[str] = spec()  # which models of the chain, in order (base is added when model.init=pretrained)
    external: list[ExternalSetConfig] = spec()  # labelled test sets from elsewhere, checked for overlap
    threads: int = spec(ge=1, le=256)  # torch threads for latency and throughput
    max_lm_blocks: int = spec(ge=1)  # perplexity on at most this many test blocks per corpus
    max_task_examples: int = spec(ge=1)
    latency_seq_len: int = spec(ge=1)
    latency_warmup: int = spec(ge=0)
    latency_runs: int = spec(ge=1)
    throughput_batch: int = spec(ge=1)
    throughput_runs: int = spec(ge=1)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "model": ModelConfig,
    "student": StudentConfig,
    "pretrain": TrainConfig,
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "prune": PruneConfig,
    "quantize": QuantizeConfig,
    "evaluate": EvaluateConfig,
}

MODEL_NAMES = ("base", "general", "teacher", "student", "pruned", "quantized")


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (compose it from conf/ with `make params`)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 - any YAML/interpolation failure is a config error
        raise ConfigError(f"{path}: cannot be read as YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def stage_params(*sections: str, path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Validated sections of params.yaml: dataclass instances, plus the top-level `seed` (int)."""
    raw = load_params(path)
    out: dict[str, Any] = {"seed": _check_value(raw.get("seed"), int, "seed", {}, path)}
    for name in sections:
        if name not in raw:
            raise ConfigError(f"{path}: missing section '{name}'")
        out[name] = parse_section(raw[name], SECTIONS[name], name, path)
    return out


def parse_section(raw: Any, schema: type[T], key: str, source: str | Path = PARAMS_FILE) -> T:
    """Check `raw` against the dataclass `schema` and build it; `key` is the dotted path for messages."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: '{key}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{key}.{unknown[0]}'. Allowed keys in '{key}': {', '.join(fields)}"
        )
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"{source}: missing key '{key}.{missing[0]}'")
    hints = typing.get_type_hints(schema)
    values = {
        name: _check_value(raw[name], hints[name], f"{key}.{name}", f.metadata, source)
        for name, f in fields.items()
    }
    return schema(**values)


def _check_value(value: Any, hint: Any, key: str, meta: Mapping, source: str | Path) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: invalid value for '{key}': {value!r} (expected {expected})")

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, options[0], key, meta, source)
    if dataclasses.is_dataclass(hint):
        return parse_section(value, hint, key, source)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise fail(f"a list of {item_type.__name__}")
        return [_check_value(v, item_type, f"{key}[{i}]", {}, source) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise fail("a string")
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {hint!r} for {key}")

    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise fail("one of " + ", ".join(map(str, choices)))
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    present = [(symbol, meta[name], ok) for name, symbol, ok in bounds if meta.get(name) is not None]
    if not all(ok(value, limit) for _, limit, ok in present):
        raise fail("a value " + " and ".join(f"{symbol} {limit}" for symbol, limit, _ in present))
    return value
