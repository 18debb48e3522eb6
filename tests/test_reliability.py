"""Issue 7: failures keep the last good outputs, reruns are exact, NaN stops the run, concurrent runs
are refused, and the smaller promises of the README hold. One test (or a few) per numbered item."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_repo import make_repo, stages_run

ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), keyed by relative path."""
    out = {}
    for name in paths:
        target = root / name
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            out[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else ""
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------------------------------------
# 1. A bad parameter fails before DVC touches anything
# --------------------------------------------------------------------------------------------------


def make_params_in_copy(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`make params ARGS=...` (python -m lmforge.compose) in a copy of conf/ and params.yaml."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "lmforge.compose", *overrides], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, tmp_path


@pytest.mark.parametrize(("override", "expected"), [
    ("prune.amount=1.5", "invalid value for 'prune.amount': 1.5 (expected a value >= 0.0 and < 1.0)"),
    ("model.n_head=3", "invalid value for 'model.n_head': 3 (expected a divisor of model.n_embd=128)"),
    ("student.n_layer=99", "'student.n_layer': 99 (the student must not be larger than its teacher, which has "
                           "4 layers"),
    ("prune.amout=0.5", "unknown key 'prune.amout' (nearest valid: prune.amount)"),
    ("profile=tinny", "unknown option 'profile=tinny' (nearest valid: tiny)"),
    ("launcher='python && touch pwned'", "invalid value for 'launcher': 'python && touch pwned'"),
])
def test_make_params_refuses_a_bad_value_in_one_line_and_writes_nothing(tmp_path, override, expected):
    result, copy = make_params_in_copy(tmp_path, override)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in lines[0]
    assert (copy / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    assert (copy / "conf/make_params.yaml").read_bytes() == (ROOT / "conf/make_params.yaml").read_bytes()


@pytest.mark.slow
def test_a_bad_parameter_under_dvc_fails_at_validate_and_changes_nothing(tmp_path):
    repo = tmp_path / "repo"
    env = make_repo(repo, ["profile=tiny"])
    first = subprocess.run(["dvc", "repro", "preprocess"], cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert stages_run(first.stdout)[0] == "validate"
    kept = ["data/processed", "metrics/preprocess.json", "models/base", "dvc.lock"]
    before = snapshot(repo, *kept)
    for override, expected in [("preprocess.block_size=0", "invalid value for 'preprocess.block_size': 0"),
                               ("model.n_head=3", "expected a divisor of model.n_embd=32")]:
        result = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, env=env, capture_output=True,
                                text=True)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert stages_run(output) == ["validate"], output
        assert expected in output
        assert snapshot(repo, *kept) == before, f"{override} changed an output"
    # the good parameters back: validation passes, and its output is unchanged, so nothing else reruns
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, env=env, check=True)
    again = subprocess.run(["dvc", "repro", "preprocess"], cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(stages_run(again.stdout)) <= {"validate"}  # DVC may restore its output from the cache instead
    assert (repo / "models/.params-valid").is_file()
    assert snapshot(repo, *kept) == before
