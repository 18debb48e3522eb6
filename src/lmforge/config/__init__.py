"""Typed, validated views of params.yaml.

params.yaml is the Hydra composition of conf/ (see `lmforge.compose`). Each stage reads only the
sections it needs; the whole file is validated first, against a dataclass schema per section and then
the rules that relate keys to one another, so a bad value stops any stage (and the validate stage,
before DVC deletes outputs) with one message naming the key, the value and what is allowed.

    schema.py    the dataclasses, one per section (SECTIONS), and the frozen Params; no defaults (conf/ has them)
    check.py     loading params.yaml and the generic type / bounds checker (load_params, stage_params, ...)
    rules.py     every rule that needs only the configuration (cross-section and domain rules)
    launcher.py  what `launcher` may be (it is templated into dvc.yaml's shell commands)

Everything is importable from lmforge.config, as before the split.
"""

from lmforge.config.check import load_params, parse_section, stage_params, unknown_key_message, validate_params
from lmforge.config.launcher import check_launcher
from lmforge.config.rules import check_across_sections, check_model_source, check_objective, student_shape
from lmforge.config.schema import (
    KD_DATA,
    MODEL_NAMES,
    OBJECTIVES,
    PARAMS_FILE,
    PRUNE_METHODS,
    QUANTIZE_CANDIDATES,
    SECTIONS,
    TOP_LEVEL_KEYS,
    AugmentConfig,
    CalibrationConfig,
    CorpusConfig,
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    ExternalSetConfig,
    FinetuneConfig,
    GateConfig,
    KDConfig,
    MixtureConfig,
    ModelConfig,
    Params,
    PreprocessConfig,
    PretrainConfig,
    PruneConfig,
    QuantizeConfig,
    RecoveryConfig,
    StudentConfig,
    TaskConfig,
    TrainConfig,
    TransferConfig,
    spec,
)

__all__ = [
    "KD_DATA", "MODEL_NAMES", "OBJECTIVES", "PARAMS_FILE", "PRUNE_METHODS", "QUANTIZE_CANDIDATES", "SECTIONS",
    "TOP_LEVEL_KEYS", "AugmentConfig", "CalibrationConfig", "CorpusConfig", "DataConfig", "DistillConfig",
    "EvaluateConfig", "ExternalSetConfig",
    "FinetuneConfig", "GateConfig", "KDConfig", "MixtureConfig", "ModelConfig", "Params", "PreprocessConfig",
    "PretrainConfig", "PruneConfig", "QuantizeConfig", "RecoveryConfig", "StudentConfig", "TaskConfig",
    "TrainConfig", "TransferConfig", "check_across_sections", "check_launcher", "check_model_source", "check_objective",
    "load_params", "parse_section", "spec", "stage_params", "student_shape", "unknown_key_message",
    "validate_params",
]
