"""Every rule that needs only the configuration is refused by validation, so by the validate stage, the first
of dvc.yaml, before DVC deletes any other stage's outputs (lmforge.config.rules).

Each case composes the real conf/ (with the group choices it names), checks that this composition is valid,
sets one bad value (or the few keys a bad combination needs) and checks that `validate_params` refuses it with
one line naming the key and the value. Removing a rule makes its case fail: the bad value would pass.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmforge.compose import compose
from lmforge.config import load_params, validate_params
from lmforge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

_COMPOSED: dict[tuple[str, ...], dict[str, Any]] = {}


def composed(tmp_path_factory: pytest.TempPathFactory, overrides: tuple[str, ...]) -> dict[str, Any]:
    """params.yaml of the real conf/ with `overrides`, as a dict (composed once per set of overrides)."""
    if overrides not in _COMPOSED:
        out = tmp_path_factory.mktemp("compose") / "params.yaml"
        compose(out, list(overrides), conf_dir=ROOT / "conf")
        _COMPOSED[overrides] = load_params(out)
    return copy.deepcopy(_COMPOSED[overrides])


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for parent in parents:
        raw = raw[parent]
    raw[last] = value


def corpus(**changes: Any) -> dict[str, Any]:
    """An external or data corpus as conf/ describes one (rt-polarity files, one per label)."""
    return {"path": "text", "name": None, "files": [], "label_files": ["ext/neg.txt", "ext/pos.txt"],
            "splits": ["train"], "sample_by": "line", "encoding": "utf-8", "text_column": "text",
            "label_column": None, "label_values": [], "detokenize": "none", **changes}


def external(name: str, **corpus_changes: Any) -> dict[str, Any]:
    return {"name": name, "source": "local", "max_examples": None, "corpus": corpus(**corpus_changes)}


LOCAL = ("data=local",)
DYNAMIC = ("quantize=dynamic_int8",)
ONNX = ("quantize=onnx_int8",)
NO_PRUNE_KEYS = {f"prune.{k}": None for k in ("amount", "n_m", "heads", "ffn", "layers", "rank_ratio", "energy",
                                               "activation_aware")}

# (id, conf/ overrides, {key: bad value}, the key the message must name, text of the value it must show)
CASES = [
    # preprocess: label words and prompt (data/preprocess.py validate)
    ("label word blank", (), {"preprocess.label_words": [" negative", "  "]}, "preprocess.label_words[1]", "'  '"),
    ("label words repeated", (), {"preprocess.label_words": [" good", " good"]}, "preprocess.label_words",
     "[' good', ' good']"),
    ("one label word", (), {"preprocess.label_words": [" good"]}, "preprocess.label_words", "[' good']"),
    ("three words, two equal", (), {"preprocess.label_words": [" a", " b", " a"]}, "preprocess.label_words",
     "[' a', ' b', ' a']"),
    ("prompt blank", (), {"preprocess.prompt": " \n"}, "preprocess.prompt", "' \\n'"),
    # data.source combinations (data/preprocess.py load_raw, data/sources.py load_real / corpus_rows / _rows)
    ("synthetic with a corpus", (), {"data.general": corpus(files=["x.txt"], label_files=[])}, "data.general",
     "a corpus"),
    ("synthetic with domain_from_task", (), {"data.domain_from_task": 0.3}, "data.domain_from_task", "0.3"),
    ("synthetic without a count", (), {"data.general_docs": None}, "data.general_docs", "None"),
    ("synthetic without task_examples", (), {"data.task_examples": None}, "data.task_examples", "None"),
    ("local without general", LOCAL, {"data.general": None}, "data.general", "None"),
    ("local without task", LOCAL, {"data.task": None}, "data.task", "None"),
    ("local with neither domain", LOCAL, {"data.domain_from_task": None}, "data.domain_from_task", "None"),
    ("local with both domains", LOCAL, {"data.domain": corpus(files=["d.txt"], label_files=[])},
     "data.domain_from_task", "0.3"),
    ("task without labels", LOCAL, {"data.task.label_files": []}, "data.task.label_files", "[]"),
    ("local format unknown", LOCAL, {"data.general.path": "xml"}, "data.general.path", "'xml'"),
    ("local corpus without files", LOCAL, {"data.general.files": []}, "data.general.files", "[]"),
    # quantize options of one method (compression/quantize.py check_config)
    ("calibration with dynamic_int8", DYNAMIC, {"quantize.calibration_blocks": 4}, "quantize.calibration_blocks",
     "4"),
    ("block_size with dynamic_int8", DYNAMIC, {"quantize.block_size": 64}, "quantize.block_size", "64"),
    ("block_size with bf16", ("quantize=bf16",), {"quantize.block_size": 32}, "quantize.block_size", "32"),
    ("block_size not a power of 2", ONNX, {"quantize.block_size": 48}, "quantize.block_size", "48"),
    ("block_size with calibration", ONNX, {"quantize.block_size": 64, "quantize.calibration_blocks": 4},
     "quantize.calibration_blocks", "4"),
    ("candidates with dynamic_int8", DYNAMIC, {"quantize.candidates": ["per_channel"]}, "quantize.candidates",
     "['per_channel']"),
    ("no candidate", ONNX, {"quantize.candidates": []}, "quantize.candidates", "[]"),
    ("candidate twice", ONNX, {"quantize.candidates": ["smooth", "smooth"]}, "quantize.candidates",
     "['smooth', 'smooth']"),
    ("unknown candidate", ONNX, {"quantize.candidates": ["per_channel", "awq"]}, "quantize.candidates[1]",
     "'awq'"),
    ("candidates with calibration", ONNX, {"quantize.calibration_blocks": 4}, "quantize.calibration_blocks", "4"),
    ("smooth_alpha above 1", ONNX, {"quantize.smooth_alpha": 1.5}, "quantize.smooth_alpha", "1.5"),
    ("max_accuracy_drop negative", ONNX, {"quantize.max_accuracy_drop": -0.01}, "quantize.max_accuracy_drop",
     "-0.01"),
    ("smooth_blocks zero", ONNX, {"quantize.smooth_blocks": 0}, "quantize.smooth_blocks", "0"),
    ("fallback_layers zero", ONNX, {"quantize.fallback_layers": 0}, "quantize.fallback_layers", "0"),
    # prune: the model-independent part of compression/methods.py check
    ("unknown prune method", (), {"prune.method": ["magnitude"]}, "prune.method", "['magnitude']"),
    ("prune method twice", (), {"prune.method": ["structured", "structured"]}, "prune.method",
     "['structured', 'structured']"),
    ("two unstructured methods", (), {**NO_PRUNE_KEYS, "prune.method": ["l1_unstructured", "wanda"],
                                      "prune.amount": 0.5}, "prune.method", "['l1_unstructured', 'wanda']"),
    ("wanda and lowrank", (), {**NO_PRUNE_KEYS, "prune.method": ["wanda", "lowrank"], "prune.amount": 0.5,
                               "prune.rank_ratio": 0.5, "prune.activation_aware": True}, "prune.method",
     "['wanda', 'lowrank']"),
    ("structured after lowrank", ("prune=structured_lowrank",), {"prune.method": ["lowrank", "structured"]},
     "prune.method", "['lowrank', 'structured']"),
    ("a key the method does not use", (), {"prune.amount": 0.5}, "prune.amount", "0.5"),
    ("lowrank key with structured", (), {"prune.energy": 0.9}, "prune.energy", "0.9"),
    ("structured removes nothing", (), {"prune.heads": 0.0, "prune.ffn": 0.0, "prune.layers": 0.0}, "prune.ffn",
     "0.0"),
    ("rank_ratio and energy", ("prune=lowrank",), {"prune.energy": 0.9}, "prune.rank_ratio", "0.25"),
    ("neither rank_ratio nor energy", ("prune=lowrank",), {"prune.rank_ratio": None}, "prune.rank_ratio", "None"),
    ("lowrank without activation_aware", ("prune=lowrank",), {"prune.activation_aware": None},
     "prune.activation_aware", "None"),
    ("n_m and amount", ("prune=wanda",), {"prune.n_m": [2, 4]}, "prune.amount", "0.5"),
    ("n_m not N < M", ("prune=wanda",), {"prune.n_m": [4, 2], "prune.amount": None}, "prune.n_m", "[4, 2]"),
    ("n_m of three", ("prune=wanda",), {"prune.n_m": [1, 2, 4], "prune.amount": None}, "prune.n_m", "[1, 2, 4]"),
    ("unstructured without amount", ("prune=l1_unstructured",), {"prune.amount": None}, "prune.amount", "None"),
    # the student and what it learns from (config/rules.py check_student)
    ("pretrained student without a folder", (), {"student.init": "pretrained", "task.head": "classifier",
                                                 "distill.data": "transfer", "prune.recovery.data": "transfer"},
     "student.name_or_path", "None"),
    ("pretrained student with an lm head", (), {"student.init": "pretrained", "student.name_or_path": "x",
                                                "distill.data": "transfer", "prune.recovery.data": "transfer"},
     "task.head", "'lm'"),
    ("pretrained student on the mixture", (), {"student.init": "pretrained", "student.name_or_path": "x",
                                               "task.head": "classifier", "prune.recovery.data": "transfer"},
     "distill.data", "'mixture'"),
    ("a folder for a teacher-layer student", (), {"student.name_or_path": "x"}, "student.name_or_path", "'x'"),
    ("hidden KD from cached outputs", (), {"distill.data": "transfer", "distill.alpha_hidden": 1.0},
     "distill.alpha_hidden", "1.0"),
    ("a transfer set of no text", (), {"transfer.task": False, "transfer.domain": False}, "transfer.task", "False"),
    ("n-gram bounds reversed", (), {"transfer.augment.ngram_min": 9, "transfer.augment.ngram_max": 3},
     "transfer.augment.ngram_min", "9"),
    ("word replacement without a masked LM", (), {"transfer.augment.mlm_replace": 0.1},
     "transfer.augment.masked_lm", "None"),
    ("a masked LM without word replacement", (), {"transfer.augment.masked_lm": "models/general"},
     "transfer.augment.masked_lm", "'models/general'"),
    # evaluate.models (evaluation/evaluate.py _check_inputs, models_to_measure)
    ("no model to evaluate", (), {"evaluate.models": []}, "evaluate.models", "[]"),
    ("unknown model name", (), {"evaluate.models": ["teacher", "distilled"]}, "evaluate.models", "'distilled'"),
    ("base with a scratch model", (), {"evaluate.models": ["base", "teacher"]}, "evaluate.models", "'base'"),
    ("base of a pretrained encoder", ("profile=minilm_sentiment",), {"evaluate.models": ["base", "teacher"]},
     "evaluate.models", "'base'"),
    # evaluate.external (evaluation/external.py load_external_sets, _load_one; data/sources.py)
    ("external name not an identifier", (), {"evaluate.external": [external("1st")]}, "evaluate.external[0].name",
     "'1st'"),
    ("external name with a dash", (), {"evaluate.external": [external("rt-polarity")]},
     "evaluate.external[0].name", "'rt-polarity'"),
    ("external name twice", (), {"evaluate.external": [external("rt"), external("rt")]},
     "evaluate.external[1].name", "'rt'"),
    ("external label count", (), {"evaluate.external": [external("rt", label_files=["ext/pos.txt"])]},
     "evaluate.external[0].corpus.label_files", "['ext/pos.txt']"),
    ("external without labels", (), {"evaluate.external": [external("rt", label_files=[], files=["e.txt"])]},
     "evaluate.external[0].corpus.label_files", "[]"),
    ("external local format", (), {"evaluate.external": [external("rt", path="xml")]},
     "evaluate.external[0].corpus.path", "'xml'"),
    # model (modeling/build.py build_model) and its relation to the other sections
    ("n_embd not divisible by n_head", (), {"model.n_head": 3}, "model.n_head", "3"),
    ("llama from scratch", (), {"model.arch": "llama"}, "model.arch", "'llama'"),
    ("name_or_path with scratch", (), {"model.name_or_path": "gpt2"}, "model.name_or_path", "'gpt2'"),
    ("pretrained without a source", (), {"model.init": "pretrained"}, "model.name_or_path", "None"),
    ("block longer than the context", (), {"preprocess.block_size": 256}, "preprocess.block_size", "256"),
    ("latency longer than the context", (), {"evaluate.latency_seq_len": 256}, "evaluate.latency_seq_len", "256"),
    ("clm on an encoder", ("profile=tiny_encoder",), {"pretrain.objective": "clm"}, "pretrain.objective", "'clm'"),
    ("mlm on a causal model", (), {"pretrain.objective": "mlm"}, "pretrain.objective", "'mlm'"),
    ("lm head on an encoder", ("profile=tiny_encoder",), {"task.head": "lm"}, "task.head", "'lm'"),
    ("student deeper than teacher", (), {"student.n_layer": 8}, "student.n_layer", "8"),
    # precision (hardware.py choose_precision: the allowed set)
    ("train precision unknown", (), {"pretrain.precision": "fp8"}, "pretrain.precision", "'fp8'"),
    ("recovery precision unknown", (), {"prune.recovery.precision": "int8"}, "prune.recovery.precision", "'int8'"),
    ("evaluate precision unknown", (), {"evaluate.precision": "int4"}, "evaluate.precision", "'int4'"),
    # the launcher templated into dvc.yaml's shell commands
    ("launcher with a shell command", (), {"launcher": "python; rm -rf ."}, "launcher", "'python; rm -rf .'"),
]


@pytest.mark.parametrize(("overrides", "bad", "key", "value"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_validate_refuses_every_config_rule(tmp_path_factory, overrides, bad, key, value):
    raw = composed(tmp_path_factory, overrides)
    validate_params(raw)  # the real composition passes: the refusal below is the bad value's
    for dotted, bad_value in bad.items():
        set_key(raw, dotted, bad_value)
    with pytest.raises(ConfigError) as err:
        validate_params(raw, "params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ") and "\n" not in message, message
    assert key in message and value in message, message


def test_the_committed_profiles_and_options_pass_every_rule(tmp_path_factory):
    """The rules refuse no configuration conf/ offers (the profiles are checked in test_config.py)."""
    for group in ("prune", "quantize", "data"):
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml") if p.stem != "common"):
            raw = composed(tmp_path_factory, (f"{group}={option}",))
            try:
                validate_params(raw)
            except ConfigError as exc:  # pragma: no cover - the message is the failure
                pytest.fail(f"{group}={option}: {exc}")


def run_validate(directory: Path, raw: dict[str, Any]) -> subprocess.CompletedProcess:
    (directory / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / "validate.py")], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_validate_stage_refuses_a_quantize_option_of_another_method_in_one_line(tmp_path_factory, tmp_path):
    """`dvc exp run -S quantize=dynamic_int8 -S quantize.block_size=64` stops at validate, not in quantize."""
    raw = composed(tmp_path_factory, DYNAMIC)
    good = run_validate(tmp_path, raw)
    assert good.returncode == 0, good.stderr
    (tmp_path / "models" / ".params-valid").unlink()

    raw["quantize"]["block_size"] = 64
    result = run_validate(tmp_path, raw)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: params.yaml: invalid value for 'quantize.block_size': 64"), lines[0]
    assert not (tmp_path / "models" / ".params-valid").exists()
