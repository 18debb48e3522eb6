"""Bad input stops a stage before any expensive work, with one clear line, and nothing half-written."""

import subprocess

import pytest
from helpers import run_stage


def assert_clean_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in error_lines[0]


@pytest.mark.parametrize(("stage", "override", "expected"), [
    ("prune", "prune.amount=1.5", "invalid value for 'prune.amount': 1.5 (expected a value > 0.0 and < 1.0)"),
    ("quantize", "+quantize.bits=4", "unknown key 'quantize.bits'"),
    ("pretrain", "pretrain.learning_rate=-1", "invalid value for 'pretrain.learning_rate': -1.0"),
])
def test_bad_parameter_stops_the_stage(tmp_path, stage, override, expected):
    assert_clean_failure(run_stage(tmp_path, stage, override), "params.yaml", expected)


@pytest.mark.parametrize(("stage", "missing", "producer"), [
    ("pretrain", "data/processed", "dvc repro preprocess"),
    ("finetune", "models/general", "dvc repro pretrain"),
    ("quantize", "models/pruned", "dvc repro prune"),
])
def test_missing_input_names_the_path_and_the_stage_that_makes_it(tmp_path, stage, missing, producer):
    result = run_stage(tmp_path, stage)
    assert_clean_failure(result, missing, producer)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert not (tmp_path / "metrics").exists()


def test_a_student_larger_than_its_teacher_fails_before_anything_is_loaded(tmp_path):
    # no teacher on disk: the shape check must come first, so the error is about the student
    result = run_stage(tmp_path, "distill", "student.n_layer=3")
    assert_clean_failure(result, "'student.n_layer': 3", "must not be larger than its teacher")
