"""Typed, validated views of params.yaml.

params.yaml is the Hydra composition of conf/ (see `lmforge.compose`). Each stage reads only the
sections it needs and validates each against a dataclass schema below *before* doing any work: an
unknown key, a missing key, a value of the wrong type or out of range stops the stage with a
message naming the key, the value and what is allowed.

Schemas carry no defaults on purpose: conf/ is the single source of truth for values.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
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
    arch: str = spec(choices=("gpt2", "llama", "bert"))  # bert: an encoder (objective mlm, task.head=classifier)
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
    # no upper bounds here: the teacher (model.*) bounds them, checked in `check_across_sections`
    n_layer: int = spec(ge=1)
    n_head: int | None = spec(ge=1)  # null: the teacher's (other than GPT-2: must be the teacher's)
    n_embd: int | None = spec(ge=8)  # null: the teacher's (other than GPT-2: must be the teacher's)
    init_from_teacher: bool = spec()  # copy embeddings and teacher blocks where widths match
    # which teacher blocks: `influence` keeps the most influential (ShortGPT, measured on calibration
    # blocks of the train split), `even` every k-th (DistilBERT)
    layer_selection: str = spec(choices=("influence", "even"))
    calibration_samples: int = spec(ge=1)  # influence: train-split LM blocks the teacher runs on


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
    # Speed switches; precision auto measures, the others default to the CPU's best: SDPA, plain AdamW, eager.
    # auto: bf16 on a GPU, on a CPU only if a start-up probe measures it faster (lmforge.hardware);
    # bf16 / fp16: autocast mixed precision, forced (fp16 needs a GPU)
    precision: str = spec(choices=("auto", "fp32", "bf16", "fp16"))
    attn_implementation: str = spec(choices=("sdpa", "eager", "flash_attention_2"))
    optim: str = spec(choices=("adamw_torch", "adamw_torch_fused"))
    torch_compile: bool = spec()


OBJECTIVES = ("clm", "mlm", "mlm_nsp")


@dataclass
class PretrainConfig(TrainConfig):
    # clm: next-token (causal models); mlm: masked tokens (encoders: 15%, 80/10/10 replacement);
    # mlm_nsp: mlm + next-sentence prediction on sentence pairs of the general corpus (BERT)
    objective: str = spec(choices=OBJECTIVES)


@dataclass
class TaskConfig:
    # lm: the label word scored by the LM head (causal models); classifier: a sequence classification head
    # (AutoModelForSequenceClassification), attached by finetune and carried down the chain
    head: str = spec(choices=("lm", "classifier"))


@dataclass
class FinetuneConfig(TrainConfig):
    mixture: MixtureConfig = spec()


@dataclass
class KDConfig:
    """The distillation loss alpha_kd * T^2 * KL + alpha_ce * CE; one copy in conf/ (distill.kd),
    shared by distill and the prune stage's recovery (prune.recovery.kd: ${distill.kd})."""

    temperature: float = spec(gt=0.0, le=100.0)
    alpha_kd: float = spec(ge=0.0)
    alpha_ce: float = spec(ge=0.0)


@dataclass
class GateConfig:
    """An accuracy gate against the teacher, on the validation split; a null limit is not checked."""

    max_accuracy_drop: float | None = spec(ge=0.0, le=1.0)  # teacher accuracy - model accuracy
    max_ppl_ratio: float | None = spec(ge=1.0)  # model perplexity / teacher perplexity (general and domain)


@dataclass
class DistillConfig(FinetuneConfig):
    kd: KDConfig = spec()
    alpha_hidden: float = spec(ge=0.0)  # weight of the hidden-state term (layer-wise KD); 0: off
    hidden_loss: str = spec(choices=("mse", "cosine"))  # mse (TinyBERT) | cosine: 1 - cos (DistilBERT)
    gate: GateConfig | None = spec()  # null: no gate


@dataclass
class RecoveryConfig:
    """Short KD fine-tuning from the teacher after pruning, with the pruned structure held fixed."""

    max_steps: int = spec(ge=0)  # 0: no recovery
    batch_size: int = spec(ge=1)
    learning_rate: float = spec(gt=0.0, le=1.0)
    kd: KDConfig = spec()
    mixture: MixtureConfig = spec()


@dataclass
class CalibrationConfig:
    """Train-split LM blocks run through the model to score weights, channels, heads and blocks."""

    samples: int = spec(ge=1)  # blocks, drawn from the general and domain train splits
    batch_size: int = spec(ge=1)


PRUNE_METHODS = ("l1_unstructured", "wanda", "structured", "lowrank")


@dataclass
class PruneConfig:
    """Keys a method does not use must be null (checked by lmforge.compression.methods.check)."""

    method: list[str] = spec()  # applied in order, from PRUNE_METHODS, e.g. [structured, lowrank]
    amount: float | None = spec(gt=0.0, lt=1.0)  # l1_unstructured, wanda: fraction of each layer's weights zeroed
    n_m: list[int] | None = spec()  # wanda: [N, M], keep N of every M consecutive weights (amount null)
    heads: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of attention heads removed per layer
    ffn: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of FFN channels removed per layer
    layers: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of blocks removed
    rank_ratio: float | None = spec(gt=0.0, le=1.0)  # lowrank: rank / min(out, in) of each layer
    energy: float | None = spec(gt=0.0, lt=1.0)  # lowrank: smallest rank keeping this share of sigma^2
    activation_aware: bool | None = spec()  # lowrank: scale input columns by activation RMS before the SVD
    calibration: CalibrationConfig = spec()
    recovery: RecoveryConfig = spec()
    gate: GateConfig | None = spec()  # null: no gate


@dataclass
class QuantizeConfig:
    # dynamic_int8: torch, int8 linear layers; onnx_int8: ONNX Runtime; bf16: weights stored and run in bf16
    method: str = spec(choices=("dynamic_int8", "onnx_int8", "bf16"))
    per_channel: bool = spec()  # one scale per output channel rather than per tensor (int8 methods)
    include_lm_head: bool = spec()  # dynamic_int8 (onnx_int8 always quantizes the head, bf16 casts it)
    min_coverage: float = spec(ge=0.0, le=1.0)  # quantized weight parameters / all weight-matrix parameters
    calibration_blocks: int = spec(ge=0)  # onnx_int8: 0 dynamic activations; N static QDQ on N train blocks
    # onnx_int8: null: one scale per output channel and per-tensor activations (MatMulInteger); N: blocks of
    # N input channels, each with its own scale, for weights and activations (ORT MatMulNBits)
    block_size: int | None = spec(ge=16, le=256)
    check_max_blocks: int = spec(ge=1)  # validation LM blocks for the loss check against the input model
    check_max_examples: int = spec(ge=1)  # validation task examples for the accuracy check
    task_model: bool = spec()  # also export the task-only model (last position, label rows of the head)
    gate: GateConfig | None = spec()  # null: no gate


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
    precision: str = spec(choices=("auto", "fp32", "bf16", "fp16"))  # of the fp32 models (int8 run their own)
    external: list[ExternalSetConfig] = spec()  # labelled test sets from elsewhere, checked for overlap
    threads: int = spec(ge=1, le=256)  # torch threads for latency and throughput
    max_lm_blocks: int = spec(ge=1)  # perplexity on at most this many test blocks per corpus
    max_task_examples: int = spec(ge=1)
    latency_seq_len: int = spec(ge=1)
    latency_warmup: int = spec(ge=0)
    latency_runs: int = spec(ge=1)
    throughput_batch: int = spec(ge=1)
    throughput_runs: int = spec(ge=1)
    gate: GateConfig = spec()  # "as good as the teacher" for the recommended model (the stages' gate checks)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "model": ModelConfig,
    "student": StudentConfig,
    "pretrain": PretrainConfig,
    "task": TaskConfig,
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "prune": PruneConfig,
    "quantize": QuantizeConfig,
    "evaluate": EvaluateConfig,
}

# Top-level scalars of params.yaml besides the sections (each checked in `validate_params`).
TOP_LEVEL_KEYS = ("seed", "launcher")


@dataclass(frozen=True)
class Params:
    """params.yaml, validated: the top-level keys and one typed config per section (SECTIONS).

    `stage_params` fills only the sections a stage declares in dvc.yaml and leaves the others None,
    so that a stage cannot silently depend on a parameter DVC does not track for it.
    """

    seed: int
    launcher: str = "python"
    data: DataConfig | None = None
    preprocess: PreprocessConfig | None = None
    model: ModelConfig | None = None
    student: StudentConfig | None = None
    pretrain: PretrainConfig | None = None
    task: TaskConfig | None = None
    finetune: FinetuneConfig | None = None
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = None
    evaluate: EvaluateConfig | None = None

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


def stage_params(*sections: str, path: str | Path = PARAMS_FILE) -> Params:
    """The validated `sections` of params.yaml (and the top-level keys); the other sections are None.

    The whole file is validated, not only `sections`: a stage refuses to run on parameters that the
    validate stage (the first of dvc.yaml) would refuse, whichever way it was started.
    """
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown params.yaml section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    params = validate_params(load_params(path), path)
    return dataclasses.replace(params, **{name: None for name in SECTIONS if name not in sections})


def validate_params(raw: Mapping[str, Any], source: str | Path = PARAMS_FILE) -> Params:
    """Every section of `raw` (iterating SECTIONS), the top-level keys, then the checks across sections.

    The first problem raises a ConfigError whose message names the key, the value and what is allowed.
    """
    allowed = [*TOP_LEVEL_KEYS, *SECTIONS]
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise ConfigError(unknown_key_message(source, str(unknown[0]), "", allowed))
    for name in allowed:
        if name not in raw:
            raise ConfigError(f"{source}: missing " + (f"section '{name}'" if name in SECTIONS else f"key '{name}'"))
    params = Params(
        seed=_check_value(raw["seed"], int, "seed", {}, source),
        launcher=check_launcher(raw["launcher"], source),
        **{name: parse_section(raw[name], schema, name, source) for name, schema in SECTIONS.items()},
    )
    check_across_sections(params, source)
    return params


def unknown_key_message(source: str | Path, key: str, section: str, allowed: list[str]) -> str:
    """One line: the unknown key, the nearest valid keys (difflib) and every allowed one."""
    prefix = f"{section}." if section else ""
    nearest = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
    hint = f" (nearest valid: {', '.join(prefix + k for k in nearest)})" if nearest else ""
    where = f"in '{section}'" if section else "at the top level"
    return f"{source}: unknown key '{prefix}{key}'{hint}. Allowed keys {where}: {', '.join(allowed)}"


def parse_section(raw: Any, schema: type[T], key: str, source: str | Path = PARAMS_FILE) -> T:
    """Check `raw` against the dataclass `schema` and build it; `key` is the dotted path for messages."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: '{key}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(unknown_key_message(source, str(unknown[0]), key, list(fields)))
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


# --------------------------------------------------------------------------------------------------
# The launcher, and the checks that involve more than one section
# --------------------------------------------------------------------------------------------------

# dvc.yaml runs `${launcher} stages/<stage>.py` through a shell: only the documented forms, with options
# made of plain characters (no ;, |, &, $, quotes, redirections), may reach it; a bare word only right after
# an option (its value), never first.
_OPTION = r"--?[A-Za-z][\w-]*(?:=[\w./:,+@-]+| [\w./:,+@-]+)?"
_LAUNCHER = re.compile(rf"python|(?:torchrun|accelerate launch)(?: {_OPTION})*")


def check_launcher(value: Any, source: str | Path = PARAMS_FILE) -> str:
    if not isinstance(value, str) or not _LAUNCHER.fullmatch(value):
        raise ConfigError(f"{source}: invalid value for 'launcher': {value!r} (expected python, "
                          "torchrun [--option[=value] ...] or accelerate launch [--option[=value] ...], "
                          "single-spaced, options of letters, digits and . / : , + @ - _ only)")
    return value


def check_model_source(model: ModelConfig, source: str | Path = PARAMS_FILE) -> None:
    """Where the teacher comes from: a combination of model.init, name_or_path and gguf_file."""
    if model.init == "scratch":
        if model.arch not in ("gpt2", "bert"):
            raise ConfigError(f"{source}: model.arch={model.arch!r} is only supported with model.init=pretrained "
                              "(from scratch lmforge builds a GPT-2 or a BERT)")
        for key in ("name_or_path", "gguf_file"):
            if getattr(model, key) is not None:
                raise ConfigError(f"{source}: model.{key}={getattr(model, key)!r} is set but model.init=scratch "
                                  f"(set model.init=pretrained, or model.{key}=null)")
    elif (model.name_or_path is None) == (model.gguf_file is None):
        raise ConfigError(f"{source}: model.init=pretrained needs exactly one of model.name_or_path "
                          f"(hub name or local folder) and model.gguf_file; got name_or_path={model.name_or_path!r}, "
                          f"gguf_file={model.gguf_file!r}")


def check_objective(model: ModelConfig, pretrain: PretrainConfig, task: TaskConfig,
                    source: str | Path = PARAMS_FILE) -> None:
    """The objective and the task head must suit the family: masked LM for encoders, next-token for the others."""
    encoder = model.arch == "bert"
    if encoder and pretrain.objective == "clm":
        raise ConfigError(f"{source}: invalid value for 'pretrain.objective': 'clm' (model.arch=bert is a "
                          "bidirectional encoder: expected mlm or mlm_nsp)")
    if not encoder and pretrain.objective != "clm":
        raise ConfigError(f"{source}: invalid value for 'pretrain.objective': {pretrain.objective!r} "
                          f"(model.arch={model.arch} is a causal LM: expected clm; mlm and mlm_nsp are for bert)")
    if encoder and task.head == "lm":
        raise ConfigError(f"{source}: invalid value for 'task.head': 'lm' (an encoder has no next-token head to "
                          "score a label word with: expected classifier for model.arch=bert)")


def student_shape(teacher: ModelConfig, student: StudentConfig,
                  source: str | Path = PARAMS_FILE) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of the student; a student larger than its teacher is a config error."""
    n_head = student.n_head or teacher.n_head
    n_embd = student.n_embd or teacher.n_embd
    for key, value, limit, teacher_key, teacher_has in [
        ("student.n_layer", student.n_layer, teacher.n_layer, "model.n_layer", f"has {teacher.n_layer} layers"),
        ("student.n_embd", n_embd, teacher.n_embd, "model.n_embd", f"is {teacher.n_embd} wide"),
    ]:
        if value > limit:
            raise ConfigError(
                f"{source}: invalid value for '{key}': {value} (the student must not be larger than its "
                f"teacher, which {teacher_has}: expected <= {teacher_key}={limit})"
            )
    if (student.n_layer, n_embd) == (teacher.n_layer, teacher.n_embd):
        raise ConfigError(
            f"{source}: the student (student.n_layer, student.n_embd) has the teacher's shape "
            f"({teacher.n_layer} layers, {teacher.n_embd} wide): nothing would be distilled into a smaller model"
        )
    if n_embd % n_head:
        raise ConfigError(f"{source}: student n_embd={n_embd} must be divisible by n_head={n_head}")
    if teacher.arch != "gpt2" and (n_head, n_embd) != (teacher.n_head, teacher.n_embd):
        raise ConfigError(f"{source}: a {teacher.arch!r} student keeps the teacher's width: set "
                          f"student.n_head and student.n_embd to null (got {student.n_head}, {student.n_embd})")
    return student.n_layer, n_head, n_embd


def check_across_sections(params: Params, source: str | Path = PARAMS_FILE) -> None:
    """Every check that involves more than one key or section, in one place (run by `validate_params`).

    Sections added later are validated by their schema through SECTIONS; a rule that relates them to
    others belongs here.
    """
    model, preprocess, evaluate = params.model, params.preprocess, params.evaluate
    if model.n_embd % model.n_head:
        raise ConfigError(f"{source}: invalid value for 'model.n_head': {model.n_head} (expected a divisor of "
                          f"model.n_embd={model.n_embd})")
    check_model_source(model, source)
    check_objective(model, params.pretrain, params.task, source)
    student_shape(model, params.student, source)
    if preprocess.block_size > model.n_positions:
        raise ConfigError(f"{source}: invalid value for 'preprocess.block_size': {preprocess.block_size} "
                          f"(expected <= model.n_positions={model.n_positions}: the model reads whole blocks)")
    if evaluate.latency_seq_len > model.n_positions:
        raise ConfigError(f"{source}: invalid value for 'evaluate.latency_seq_len': {evaluate.latency_seq_len} "
                          f"(expected <= model.n_positions={model.n_positions})")
    unknown_models = [m for m in evaluate.models if m not in MODEL_NAMES]
    if unknown_models:
        raise ConfigError(f"{source}: invalid value for 'evaluate.models': {unknown_models[0]!r} "
                          f"(expected names from {', '.join(MODEL_NAMES)})")
