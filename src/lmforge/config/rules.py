"""Rules that need only the configuration, run by `validate_params` (so by the validate stage, before DVC
deletes any other stage's outputs): values that relate keys or sections to one another, and per-key domain
checks a bound cannot express. Each failure is one ConfigError naming the key, the value and what is allowed.

A rule that needs the model, the data or the machine (an N:M pattern against a layer's width, heads on
GPT-2, fp16 on a CPU) stays with the code that has them.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config.schema import (
    MODEL_NAMES,
    PARAMS_FILE,
    ModelConfig,
    Params,
    PretrainConfig,
    StudentConfig,
    TaskConfig,
)
from lmforge.errors import ConfigError


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
