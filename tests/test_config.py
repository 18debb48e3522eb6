"""conf/ is the single source of truth: params.yaml is its composition, and every section validates."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from lmforge.compose import compose
from lmforge.config import SECTIONS, TOP_LEVEL_KEYS, Params, stage_params
from lmforge.errors import ConfigError
from lmforge.modeling.build import student_shape

ROOT = Path(__file__).resolve().parents[1]


def composed(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "params.yaml"
    compose(out, list(overrides), conf_dir=ROOT / "conf")
    return out


def test_committed_params_equal_a_fresh_composition(tmp_path):
    fresh = composed(tmp_path).read_text()
    assert (ROOT / "params.yaml").read_text() == fresh, "params.yaml is stale: run `make params`"


@pytest.mark.parametrize("profile", [None, *sorted(p.stem for p in (ROOT / "conf/profile").glob("*.yaml"))])
def test_every_section_of_every_profile_validates(tmp_path, profile):
    path = composed(tmp_path, *([f"profile={profile}"] if profile else []))
    params = stage_params(*SECTIONS, path=path)
    raw = yaml.safe_load(path.read_text())
    for name in SECTIONS:  # what the stages read is what params.yaml says: no value dropped, defaulted or retyped
        assert dataclasses.asdict(getattr(params, name)) == raw[name], name


def test_params_has_one_typed_field_per_section_and_a_stage_gets_only_the_sections_it_declares(tmp_path):
    assert [f.name for f in dataclasses.fields(Params)] == [*TOP_LEVEL_KEYS, *SECTIONS]
    params = stage_params("model", "pretrain", path=composed(tmp_path))
    assert params.model.arch == "gpt2" and params.pretrain.max_steps > 0 and params.seed == 1234
    assert params.data is None and params.evaluate is None  # not declared: DVC does not track them
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1
    with pytest.raises(ValueError, match="'pretrian'"):
        stage_params("pretrian", path=composed(tmp_path))


@pytest.mark.parametrize("method", sorted(p.stem for p in (ROOT / "conf/prune").glob("*.yaml") if p.stem != "common"))
def test_every_prune_option_validates_and_fits_the_default_student(tmp_path, method):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.compression import methods

    cfg = stage_params("prune", path=composed(tmp_path, f"prune={method}")).prune
    torch.manual_seed(0)
    methods.check(cfg, GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=128, n_layer=2, n_head=4)))


def edited(tmp_path: Path, section: str, key: str, value) -> Path:
    path = composed(tmp_path)
    raw = yaml.safe_load(path.read_text())
    target = raw[section]
    *parents, last = key.split(".")
    for parent in parents:
        target = target[parent]
    target[last] = value
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("prune", "amount", 1.5, "invalid value for 'prune.amount': 1.5 (expected a value > 0.0 and < 1.0)"),
        ("prune", "gate.max_ppl_ratio", 0.5, "'prune.gate.max_ppl_ratio': 0.5 (expected a value >= 1.0)"),
        ("distill", "kd.temperature", 0, "'distill.kd.temperature': 0.0 (expected a value > 0.0 and <= 100.0)"),
        ("prune", "recovery.max_steps", -1, "'prune.recovery.max_steps': -1 (expected a value >= 0)"),
        ("quantize", "method", "int3", "'quantize.method': 'int3' (expected one of dynamic_int8, onnx_int8, bf16)"),
        ("quantize", "per_channel", "yes", "'quantize.per_channel': 'yes' (expected true or false)"),
        ("pretrain", "max_steps", 2.5, "'pretrain.max_steps': 2.5 (expected an integer)"),
        ("preprocess", "label_words", " positive", "(expected a list of str)"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(tmp_path, section, key, value, message):
    path = edited(tmp_path, section, key, value)
    with pytest.raises(ConfigError) as err:
        stage_params(section, path=path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_key_lists_the_allowed_ones(tmp_path):
    path = edited(tmp_path, "prune", "amout", 0.5)
    with pytest.raises(ConfigError, match=r"unknown key 'prune.amout' \(nearest valid: prune.amount\). "
                                          r"Allowed keys in 'prune': method, amount"):
        stage_params("prune", path=path)


def test_a_missing_key_is_named(tmp_path):
    path = composed(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["distill"]["kd"]["temperature"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="missing key 'distill.kd.temperature'"):
        stage_params("distill", path=path)


def test_recovery_uses_the_distill_kd_loss_written_once_in_conf(tmp_path):
    params = stage_params("distill", "prune", path=composed(tmp_path, "distill.kd.temperature=3.5"))
    assert params.prune.recovery.kd == params.distill.kd
    assert params.distill.kd.temperature == 3.5
    conf = [p.read_text() for p in (ROOT / "conf").rglob("*.yaml")]
    assert sum(len(re.findall(r"^\s*temperature:", text, re.M)) for text in conf) == 1


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match="make params"):
        stage_params("prune", path=tmp_path / "params.yaml")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("n_layer", 8, "'student.n_layer': 8 (the student must not be larger than its teacher, which has 4 layers: "
                   "expected <= model.n_layer=4)"),
    ("n_layer", 99, "'student.n_layer': 99 (the student must not be larger than its teacher, which has 4 layers"),
    ("n_embd", 256, "'student.n_embd': 256"),
])
def test_a_student_larger_than_its_teacher_is_refused(tmp_path, key, value, message):
    path = edited(tmp_path, "student", key, value)
    with pytest.raises(ConfigError) as err:  # when any stage reads params.yaml, whichever sections it needs
        stage_params("prune", path=path)
    assert message in str(err.value)
    params = stage_params("model", "student", path=edited(tmp_path, "student", "n_layer", 2))
    with pytest.raises(ConfigError, match="must not be larger than its teacher"):
        student_shape(params.model, dataclasses.replace(params.student, **{key: value}))


OPTION_FILES = sorted(p for p in (ROOT / "conf").glob("*/*.yaml")
                      if p.parent.name not in ("accelerate", "train") and p.stem != "common")


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}={p.stem}")
def test_every_option_file_starts_with_the_command_that_selects_it(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    group, option = path.parent.name, path.stem
    assert lines[0].startswith("# ") and f"{group}={option}" in lines[0], f"{path}: first line {lines[0]!r}"
    if group == "profile":
        assert "make params" in lines[0] or "dvc exp run" in lines[0]
    else:
        assert f"dvc exp run -S {group}={option}" in lines[0]


def test_conf_says_the_step_budget_and_the_gates_once(tmp_path):
    """Profiles choose a steps and a gates option instead of restating training-step keys and gate blocks;
    the keys the steps group sets are left open (???) in conf/train/base.yaml."""
    budget = ("max_steps", "batch_size", "warmup_steps", "logging_steps", "eval_steps", "save_steps",
              "eval_max_examples")
    base = yaml.safe_load((ROOT / "conf/train/base.yaml").read_text())
    assert all(base[key] == "???" for key in budget)
    for profile in (ROOT / "conf/profile").rglob("*.yaml"):  # with the parts profiles share (conf/profile/shared)
        raw = yaml.safe_load(profile.read_text())
        for stage in ("pretrain", "finetune", "distill"):
            restated = set(raw.get(stage) or {}) & {*budget, "precision", "optim", "torch_compile", "sampling"}
            assert not restated, f"{profile.name}: {stage}.{sorted(restated)} belong in conf/steps/"
        gates = [stage for stage in ("distill", "prune", "quantize") if "gate" in (raw.get(stage) or {})]
        assert not gates, f"{profile.name}: {gates[0]}.gate belongs in conf/gates/"
    text = "\n".join(p.read_text() for p in (ROOT / "conf").rglob("*.yaml"))
    assert len(re.findall(r"^\s*max_accuracy_drop: 0\.05", text, re.M)) == 1  # the stages' gate, once
    disabled = stage_params(*SECTIONS, path=composed(tmp_path, "gates=disabled"))
    assert disabled.distill.gate is None and disabled.prune.gate is None and disabled.quantize.gate is None
    tiny = stage_params(*SECTIONS, path=composed(tmp_path, "steps=tiny"))
    assert tiny.pretrain.max_steps == tiny.finetune.max_steps == tiny.distill.max_steps == 6


@pytest.mark.parametrize(("overrides", "steps"), [((), 100), (("profile=tiny",), 3), (("profile=smollm2",), 1)])
def test_prune_recovery_is_a_training_run_composed_from_train_base(tmp_path, overrides, steps):
    """prune.recovery carries every training key (conf/train/base.yaml, with what differs in conf/prune/common.yaml)
    and `train_config()` is the TrainConfig the prune stage built from literals before (precision: base's auto)."""
    from lmforge.config import TrainConfig

    prune = stage_params("prune", path=composed(tmp_path, *overrides)).prune
    recovery = prune.recovery
    assert prune.validation_examples == 256 and recovery.max_steps == steps
    assert recovery.train_config() == TrainConfig(
        max_steps=steps, batch_size=recovery.batch_size, grad_accum_steps=1, learning_rate=recovery.learning_rate,
        lr_scheduler="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=max(1, steps // 10), eval_steps=steps, save_steps=max(1, steps // 2),
        eval_max_examples=256, precision="auto", attn_implementation="sdpa", optim="adamw_torch_fused",
        torch_compile=False, sampling="random")
    explicit = dataclasses.replace(recovery, logging_steps=7, eval_steps=8, save_steps=9).train_config()
    assert (explicit.logging_steps, explicit.eval_steps, explicit.save_steps) == (7, 8, 9)
    shared = stage_params("prune", path=composed(tmp_path, *overrides, "prune.recovery.optim=adamw_torch"))
    assert shared.prune.recovery.train_config().optim == "adamw_torch"
