"""conf/ is the single source of truth: params.yaml is its composition, and every section validates."""

from pathlib import Path

import pytest
import yaml

from lmforge.compose import compose
from lmforge.config import SECTIONS, stage_params
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


@pytest.mark.parametrize("profile", [None, "tiny"])
def test_every_section_of_every_profile_validates(tmp_path, profile):
    path = composed(tmp_path, *([f"profile={profile}"] if profile else []))
    params = stage_params(*SECTIONS, path=path)
    assert set(params) == {"seed", *SECTIONS}


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
        ("prune", "amount", 1.5, "invalid value for 'prune.amount': 1.5 (expected a value >= 0.0 and < 1.0)"),
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
    with pytest.raises(ConfigError, match=r"unknown key 'prune.amout'. Allowed keys in 'prune': method, amount"):
        stage_params("prune", path=path)


def test_a_missing_key_is_named(tmp_path):
    path = composed(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["distill"]["temperature"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="missing key 'distill.temperature'"):
        stage_params("distill", path=path)


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match="make params"):
        stage_params("prune", path=tmp_path / "params.yaml")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("n_layer", 8, "'student.n_layer': 8 (the student must not be larger than its teacher: "
                   "expected <= model.n_layer=4)"),
    ("n_embd", 256, "'student.n_embd': 256"),
])
def test_a_student_larger_than_its_teacher_is_refused(tmp_path, key, value, message):
    path = edited(tmp_path, "student", key, value)
    params = stage_params("model", "student", path=path)
    with pytest.raises(ConfigError) as err:
        student_shape(params["model"], params["student"])
    assert message in str(err.value)
