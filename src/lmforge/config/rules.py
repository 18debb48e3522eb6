"""Rules that need only the configuration, run by `validate_params` (so by the validate stage, before DVC
deletes any other stage's outputs): values that relate keys or sections to one another, and per-key domain
checks a bound cannot express. Each failure is one ConfigError naming the key, the value and what is allowed.

A rule that needs the model, the data or the machine (an N:M pattern against a layer's width, heads on
GPT-2, fp16 on a CPU) stays with the code that has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.config.schema import (
    LOCAL_FORMATS,
    MODEL_NAMES,
    PARAMS_FILE,
    PRUNE_METHOD_KEYS,
    PRUNE_METHODS,
    QUANTIZE_CANDIDATES,
    UNSTRUCTURED_METHODS,
    CorpusConfig,
    DataConfig,
    EvaluateConfig,
    ModelConfig,
    Params,
    PreprocessConfig,
    PretrainConfig,
    PruneConfig,
    QuantizeConfig,
    StudentConfig,
    TaskConfig,
)
from lmforge.errors import ConfigError

# the model.arch values of bidirectional encoders: lmforge.modeling.family.ENCODER_TYPES (a test keeps them equal;
# the config layer does not import the modeling layer)
ENCODER_ARCHS = ("bert", "mpnet")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # an external set's name: a metrics key and a column

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
    encoder = model.arch in ENCODER_ARCHS
    if encoder and pretrain.objective == "clm":
        expected = "mlm or mlm_nsp" if model.arch == "bert" else "mlm"
        raise ConfigError(f"{source}: invalid value for 'pretrain.objective': 'clm' (model.arch={model.arch} is a "
                          f"bidirectional encoder: expected {expected})")
    if not encoder and pretrain.objective != "clm":
        raise ConfigError(f"{source}: invalid value for 'pretrain.objective': {pretrain.objective!r} "
                          f"(model.arch={model.arch} is a causal LM: expected clm; mlm and mlm_nsp are for bert)")
    if encoder and model.arch != "bert" and pretrain.objective == "mlm_nsp":  # BertForPreTraining only
        raise ConfigError(f"{source}: invalid value for 'pretrain.objective': 'mlm_nsp' (next-sentence prediction "
                          f"needs BERT's pretraining head; model.arch={model.arch}: expected mlm)")
    if encoder and task.head == "lm":
        raise ConfigError(f"{source}: invalid value for 'task.head': 'lm' (an encoder has no next-token head to "
                          f"score a label word with: expected classifier for model.arch={model.arch})")


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
    """Every rule that needs only the configuration, in one place (run by `validate_params`, so by the
    validate stage before DVC deletes any output).

    Sections added later are validated by their schema through SECTIONS; a rule that relates their keys to
    one another, or to other sections, belongs here.
    """
    model, preprocess, evaluate = params.model, params.preprocess, params.evaluate
    if model.n_embd % model.n_head:
        raise ConfigError(f"{source}: invalid value for 'model.n_head': {model.n_head} (expected a divisor of "
                          f"model.n_embd={model.n_embd})")
    check_model_source(model, source)
    check_objective(model, params.pretrain, params.task, source)
    check_student(params, source)
    if params.student.init != "pretrained":  # a pretrained student's shape is its checkpoint's
        student_shape(model, params.student, source)
    if preprocess.block_size > model.n_positions:
        raise ConfigError(f"{source}: invalid value for 'preprocess.block_size': {preprocess.block_size} "
                          f"(expected <= model.n_positions={model.n_positions}: the model reads whole blocks)")
    if evaluate.latency_seq_len > model.n_positions:
        raise ConfigError(f"{source}: invalid value for 'evaluate.latency_seq_len': {evaluate.latency_seq_len} "
                          f"(expected <= model.n_positions={model.n_positions})")
    check_preprocess(preprocess, source)
    check_data(params.data, source)
    check_prune(params.prune, source)
    check_quantize(params.quantize, source)
    check_evaluate(evaluate, model, preprocess, source)


def check_student(params: Params, source: str | Path = PARAMS_FILE) -> None:
    """What the student is made from, what it learns from (distill.data, prune.recovery.data) and the transfer
    set agree."""
    student, distill, transfer = params.student, params.distill, params.transfer
    if student.init == "pretrained":
        if not student.name_or_path:
            raise _invalid(source, "student.name_or_path", student.name_or_path,
                           "a local folder or pkg://<package>/<folder> with student.init=pretrained")
        if params.task.head != "classifier":
            raise _invalid(source, "task.head", params.task.head, "classifier with student.init=pretrained: a "
                           "student of another family learns the teacher's label distribution through its own head")
        for key, value in (("distill.data", distill.data), ("prune.recovery.data", params.prune.recovery.data)):
            if value != "transfer":
                raise _invalid(source, key, value, "transfer with student.init=pretrained: a student with its own "
                               "tokenizer learns from the teacher's cached outputs on text")
    elif student.name_or_path is not None:
        raise _invalid(source, "student.name_or_path", student.name_or_path,
                       f"null with student.init={student.init} (it names the checkpoint of init=pretrained)")
    if distill.data == "transfer" and distill.alpha_hidden > 0:
        raise _invalid(source, "distill.alpha_hidden", distill.alpha_hidden, "0 with distill.data=transfer: "
                       "hidden-state KD needs the teacher's activations, run online with distill.data=mixture")
    aug = transfer.augment
    if not (transfer.task or transfer.domain):
        raise _invalid(source, "transfer.task", transfer.task, "true, or transfer.domain true: the transfer set "
                       "needs texts")
    if aug.ngram_min > aug.ngram_max:
        raise _invalid(source, "transfer.augment.ngram_min", aug.ngram_min,
                       f"<= transfer.augment.ngram_max={aug.ngram_max}")
    if aug.mlm_replace > 0 and not aug.masked_lm:
        raise _invalid(source, "transfer.augment.masked_lm", aug.masked_lm,
                       "a local masked-LM folder (e.g. models/general of an encoder profile) with mlm_replace > 0")
    if aug.mlm_replace == 0 and aug.masked_lm:
        raise _invalid(source, "transfer.augment.masked_lm", aug.masked_lm,
                       "null with transfer.augment.mlm_replace=0 (it is only read for the word replacement)")


def _invalid(source: str | Path, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: invalid value for '{key}': {value!r} (expected {expected})")


def check_preprocess(cfg: PreprocessConfig, source: str | Path = PARAMS_FILE) -> None:
    """The label words name the classes (index = label id) and follow the prompt: none blank, none twice."""
    words = cfg.label_words
    for i, word in enumerate(words):
        if not word.strip():
            raise _invalid(source, f"preprocess.label_words[{i}]", word, "a non-blank word: each names a class")
    if len(set(words)) < 2 or len(set(words)) != len(words):
        raise _invalid(source, "preprocess.label_words", words, "at least 2 distinct words, one per class")
    if not cfg.prompt.strip():
        raise _invalid(source, "preprocess.prompt", cfg.prompt, "a non-blank prompt between review and label word")


def check_data(cfg: DataConfig, source: str | Path = PARAMS_FILE) -> None:
    """The combination of data.source and the corpora: synthetic generates them, local and hub read them."""
    if cfg.source == "synthetic":
        for key in ("general", "domain", "task", "domain_from_task"):
            value = getattr(cfg, key)
            if value is not None:
                shown = repr(value) if key == "domain_from_task" else "a corpus"
                raise ConfigError(f"{source}: invalid value for 'data.{key}': {shown} (expected null with "
                                  "data.source=synthetic, which generates its corpora; data=local or data=hub read "
                                  "files)")
        for key in ("general_docs", "domain_docs", "task_examples"):
            if getattr(cfg, key) is None:
                raise _invalid(source, f"data.{key}", None, "a number of documents to generate with "
                               "data.source=synthetic")
        return
    for key in ("general", "task"):
        if getattr(cfg, key) is None:
            raise _invalid(source, f"data.{key}", None, f"a corpus with data.source={cfg.source}")
    if (cfg.domain is None) == (cfg.domain_from_task is None):
        raise ConfigError(f"{source}: invalid value for 'data.domain_from_task': {cfg.domain_from_task!r} (expected "
                          f"exactly one of data.domain (a corpus) and data.domain_from_task (a share of the task "
                          f"reviews); data.domain is {'null' if cfg.domain is None else 'set'})")
    hub = cfg.source == "hub"
    for key in ("general", "domain", "task"):
        if getattr(cfg, key) is not None:
            check_corpus(getattr(cfg, key), f"data.{key}", hub, labelled=key == "task", source=source)


def check_corpus(cfg: CorpusConfig, key: str, hub: bool, labelled: bool, source: str | Path = PARAMS_FILE) -> None:
    """A corpus lmforge can open: a known local builder with files, and labels for a labelled corpus."""
    if labelled and not cfg.label_files and (cfg.label_column is None or not cfg.label_values):
        raise ConfigError(f"{source}: invalid value for '{key}.label_files': {cfg.label_files!r} (a labelled corpus "
                          f"needs label_files, one glob per label, or label_column and label_values; "
                          f"label_column is {cfg.label_column!r}, label_values {cfg.label_values!r})")
    if hub:
        return
    if cfg.path not in LOCAL_FORMATS:
        raise _invalid(source, f"{key}.path", cfg.path, "a local format: " + ", ".join(LOCAL_FORMATS))
    if not cfg.files and not cfg.label_files:
        raise _invalid(source, f"{key}.files", cfg.files, "at least one glob (or label_files) for a local corpus")


def check_prune(cfg: PruneConfig, source: str | Path = PARAMS_FILE) -> None:
    """The model-independent part of the prune checks: the method list, its combinations and the keys each
    method needs or must leave null. (The N:M width and heads per family need the model: methods.check.)"""
    methods = cfg.method
    if any(m not in PRUNE_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise _invalid(source, "prune.method", methods, "a list of distinct methods from " + ", ".join(PRUNE_METHODS)
                       + " ([] prunes nothing: prune=none)")
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            if a in UNSTRUCTURED_METHODS and b in UNSTRUCTURED_METHODS:
                raise _combination(source, methods, f"{a} and {b} cannot be combined: both zero weights of the "
                                   "same layers; choose one")
            if {a, b} & set(UNSTRUCTURED_METHODS) and "lowrank" in (a, b):
                other = a if a != "lowrank" else b
                raise _combination(source, methods, f"{other} and lowrank cannot be combined: the SVD factors of a "
                                   "sparse matrix are dense, and masks on factors are not the method's masks")
            if b == "structured":
                raise _combination(source, methods, f"structured must come before {a} ([structured, {a}]): it "
                                   f"rebuilds the model from dense weights, so it would undo {a}")
    used = {key for m in methods for key in PRUNE_METHOD_KEYS[m]}
    for key in sorted({k for keys in PRUNE_METHOD_KEYS.values() for k in keys} - used):
        if getattr(cfg, key) is not None:
            raise _invalid(source, f"prune.{key}", getattr(cfg, key), f"null: prune.method {methods} does not use "
                           "it (or select the method that does)")
    if "wanda" in methods and cfg.n_m is not None:
        if cfg.amount is not None:
            raise _invalid(source, "prune.amount", cfg.amount, f"null with prune.n_m={cfg.n_m}: N:M fixes the "
                           "sparsity at 1 - N/M")
        if len(cfg.n_m) != 2 or not 0 < cfg.n_m[0] < cfg.n_m[1]:
            raise _invalid(source, "prune.n_m", cfg.n_m, "[N, M] with 0 < N < M, e.g. [2, 4]")
    elif set(methods) & set(UNSTRUCTURED_METHODS) and cfg.amount is None:
        raise _invalid(source, "prune.amount", None, f"a fraction > 0 and < 1 with prune.method {methods}")
    if "structured" in methods and not any((cfg.heads, cfg.ffn, cfg.layers)):
        raise ConfigError(f"{source}: invalid value for 'prune.ffn': {cfg.ffn!r} (prune.method structured needs "
                          f"some of prune.heads, prune.ffn, prune.layers > 0: all are 0 or null, nothing to remove)")
    if "lowrank" in methods:
        if (cfg.rank_ratio is None) == (cfg.energy is None):
            raise ConfigError(f"{source}: invalid value for 'prune.rank_ratio': {cfg.rank_ratio!r} (prune.method "
                              f"lowrank needs exactly one of prune.rank_ratio and prune.energy, which is "
                              f"{cfg.energy!r})")
        if cfg.activation_aware is None:
            raise _invalid(source, "prune.activation_aware", None, "true or false with prune.method lowrank")


def _combination(source: str | Path, methods: list[str], why: str) -> ConfigError:
    return ConfigError(f"{source}: invalid value for 'prune.method': {methods!r} ({why})")


def check_quantize(cfg: QuantizeConfig, source: str | Path = PARAMS_FILE) -> None:
    """Options that only onnx_int8 understands, and block sizes ORT's MatMulNBits takes."""
    if cfg.calibration_blocks and cfg.method != "onnx_int8":
        raise _invalid(source, "quantize.calibration_blocks", cfg.calibration_blocks,
                       f"0: static calibration is for method onnx_int8, not {cfg.method}")
    if cfg.block_size is not None:
        if cfg.method != "onnx_int8":
            raise _invalid(source, "quantize.block_size", cfg.block_size,
                           f"null: blockwise quantization is for method onnx_int8, not {cfg.method}")
        if cfg.block_size & (cfg.block_size - 1):
            raise _invalid(source, "quantize.block_size", cfg.block_size,
                           "a power of 2 from 16 to 256, as ORT's MatMulNBits requires")
        if cfg.calibration_blocks:
            raise _invalid(source, "quantize.calibration_blocks", cfg.calibration_blocks,
                           "0 with quantize.block_size set: blockwise activations are quantized at run time")
    if cfg.candidates is not None:
        names = ", ".join(QUANTIZE_CANDIDATES)
        if cfg.method != "onnx_int8":
            raise _invalid(source, "quantize.candidates", cfg.candidates,
                           f"null: candidates are ONNX Runtime int8 variants, for method onnx_int8, not {cfg.method}")
        if not cfg.candidates or len(set(cfg.candidates)) != len(cfg.candidates):
            raise _invalid(source, "quantize.candidates", cfg.candidates,
                           f"null or a list of distinct names from {names}")
        for i, name in enumerate(cfg.candidates):
            if name not in QUANTIZE_CANDIDATES:
                raise _invalid(source, f"quantize.candidates[{i}]", name, f"one of {names}")
        if cfg.calibration_blocks:
            raise _invalid(source, "quantize.calibration_blocks", cfg.calibration_blocks,
                           "0 with quantize.candidates set: the candidates quantize activations at run time")


def check_evaluate(cfg: EvaluateConfig, model: ModelConfig, preprocess: PreprocessConfig,
                   source: str | Path = PARAMS_FILE) -> None:
    """The models to measure exist in this chain; external test sets have unique names and the task's labels."""
    if not cfg.models:
        raise _invalid(source, "evaluate.models", cfg.models, "at least one of " + ", ".join(MODEL_NAMES))
    unknown_models = [m for m in cfg.models if m not in MODEL_NAMES]
    if unknown_models:
        raise _invalid(source, "evaluate.models", unknown_models[0], "names from " + ", ".join(MODEL_NAMES))
    if "base" in cfg.models:
        if model.init != "pretrained":
            raise ConfigError(f"{source}: invalid value in 'evaluate.models': 'base' (models/base holds weights only "
                              "with model.init=pretrained; model.init is scratch)")
        if model.arch in ENCODER_ARCHS:
            raise ConfigError(f"{source}: invalid value in 'evaluate.models': 'base' (a pretrained encoder is stored "
                              "without an MLM or task head: there is nothing to measure it with; pretrain adds the "
                              "heads)")
    names = [external.name for external in cfg.external]
    for i, external in enumerate(cfg.external):
        key = f"evaluate.external[{i}]"
        if not _IDENTIFIER.match(external.name):
            raise _invalid(source, f"{key}.name", external.name, "an identifier: a letter, then letters, digits or _")
        if names.index(external.name) != i:
            raise _invalid(source, f"{key}.name", external.name, f"a name not used before (evaluate.external"
                           f"[{names.index(external.name)}] has it)")
        corpus = external.corpus
        check_corpus(corpus, f"{key}.corpus", external.source == "hub", labelled=True, source=source)
        n_values = len(corpus.label_files) or len(corpus.label_values)
        n_labels = len(preprocess.label_words)
        if n_values != n_labels:
            which = "label_files" if corpus.label_files else "label_values"
            raise ConfigError(f"{source}: invalid value for '{key}.corpus.{which}': {getattr(corpus, which)!r} "
                              f"({n_values} labels (label_files or label_values) for the task's {n_labels} label "
                              f"words {preprocess.label_words}: expected one per label word)")
