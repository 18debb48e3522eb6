"""The prune stage (and distill's gate) on real tiny artifacts: each method's artifact, metrics and loader,
and accuracy gates that pass and that fail (exit status 2, the previous output intact, nothing new)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import library_noise, run_stage
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def folder_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


# What the stages up to distill wrote in the session's tiny run (profile=tiny), and nothing after them
CHAIN = ["params.yaml", "data/processed", "models/base", "models/general", "models/teacher", "models/student",
         *(f"metrics/{stage}.json" for stage in ("preprocess", "pretrain", "finetune", "distill"))]


@pytest.fixture
def work(tiny_run, tmp_path) -> Path:
    """A private copy of data/processed, models/teacher and models/student of the tiny profile (the session's
    tiny run, up to distill), so that tests do not see each other's models/pruned."""
    dest = tmp_path / "work"
    for name in CHAIN:
        source = tiny_run.path / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest / name)
    return dest


def metrics(work: Path, stage: str = "prune") -> dict:
    return json.loads((work / "metrics" / f"{stage}.json").read_text())


def test_structured_saves_a_smaller_hf_model_with_metrics_and_a_passing_gate_and_a_clean_log(work):
    result = run_stage(work, "prune", "prune.gate={max_accuracy_drop:1.0,max_ppl_ratio:1000}")
    ok(result)
    # calibration and recovery training print lmforge's lines and none of transformers' notes
    assert library_noise(result.stderr) == []
    assert "INFO lmforge: wrote metrics/prune.json" in result.stderr
    m = metrics(work)
    assert m["method"] == ["structured"] and m["format"] == "hf"
    assert m["methods"]["structured"]["ffn_channels"] == {"before": 128, "after": 64}  # tiny: 4 x 32 wide
    assert m["after"]["params"] < m["before"]["params"]
    assert m["bytes_on_disk"]["after"] < m["bytes_on_disk"]["before"]
    assert set(m["validation"]) == {"teacher", "student", "pruned", "recovered"}
    assert m["gate"]["passed"] is True and m["calibration"]["samples"] == 64
    model = AutoModelForCausalLM.from_pretrained(work / "models/pruned")
    assert model.config.n_inner == 64 and model.transformer.h[0].mlp.c_fc.weight.shape == (32, 64)
    assert sum(p.numel() for p in model.parameters()) == m["after"]["params"]


def test_lowrank_artifact_loads_in_evaluate_with_its_real_parameters(work, monkeypatch):
    ok(run_stage(work, "prune", "prune=lowrank", "prune.rank_ratio=0.25"))
    m = metrics(work)
    assert m["format"] == "lowrank"
    per_type = m["methods"]["lowrank"]["per_type"]
    assert per_type["mlp.c_fc"]["ranks"] == [8] and per_type["mlp.c_fc"]["factored"] == 1
    assert sorted(p.name for p in (work / "models/pruned").glob("*.json"))[:2] == ["config.json", "lowrank.json"]
    monkeypatch.chdir(work)
    from lmforge.evaluation import metrics as measure
    from lmforge.modeling.io import load_model

    model = load_model("models/pruned")
    assert measure.count_parameters(model)["parameters"] == m["after"]["params"] < m["before"]["params"]
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_wanda_two_four_keeps_its_pattern_through_recovery(work):
    ok(run_stage(work, "prune", "prune=wanda", "prune.amount=null", "prune.n_m=[2,4]"))
    m = metrics(work)
    assert m["after"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    model = AutoModelForCausalLM.from_pretrained(work / "models/pruned")
    weight = model.transformer.h[0].mlp.c_fc.weight.t()  # (out, in)
    assert torch.all((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2)


def test_a_failing_prune_gate_exits_2_and_leaves_the_previous_model(work):
    previous = work / "models/pruned"
    shutil.copytree(work / "models/student", previous)
    before = folder_digest(previous)
    result = run_stage(work, "prune", "prune.recovery.learning_rate=1.0",
                       "prune.gate={max_accuracy_drop:null,max_ppl_ratio:1.0}")
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error and "prune gate failed: validation ppl_" in error[0] and "the teacher's" in error[0]
    assert "prune.gate.max_ppl_ratio = 1.0" in error[0]
    assert folder_digest(previous) == before
    assert not list((work / "models").glob(".*")) and not (work / "metrics/prune.json").exists()


def test_a_failing_distill_gate_exits_2_and_leaves_the_previous_student(work):
    student = work / "models/student"
    before = folder_digest(student)
    (work / "metrics/distill.json").unlink()
    result = run_stage(work, "distill", "distill.learning_rate=1.0",
                       "distill.gate={max_accuracy_drop:null,max_ppl_ratio:1.0}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: distill gate failed: validation ppl_" in result.stderr
    assert folder_digest(student) == before
    assert not list((work / "models").glob(".*")) and not (work / "metrics/distill.json").exists()


def test_layer_wise_kd_of_a_narrower_student_trains_a_projection_and_saves_a_plain_student(work):
    ok(run_stage(work, "distill", "distill.alpha_hidden=1.0", "distill.hidden_loss=mse", "student.n_embd=16",
                 "student.n_head=2", "distill.gate=null"))
    m = metrics(work, "distill")
    assert m["hidden_kd"] == {"alpha_hidden": 1.0, "loss": "mse", "projection": True}
    curve = (work / "dvclive/distill/plots/metrics/hidden_loss.tsv").read_text().splitlines()
    assert len(curve) > 1 and all(float(line.split("\t")[-1]) > 0 for line in curve[1:])
    student = AutoModelForCausalLM.from_pretrained(work / "models/student")  # no stray projection weights
    assert student.config.n_embd == 16 and not hasattr(student, "hidden_projection")


def test_an_impossible_combination_is_refused_before_any_work(work):
    result = run_stage(work, "prune", "prune.method=[wanda,lowrank]", "prune.amount=0.5", "prune.ffn=null",
                       "prune.heads=null", "prune.layers=null", "prune.rank_ratio=0.5", "prune.activation_aware=true")
    assert result.returncode == 2
    assert "'prune.method': ['wanda', 'lowrank'] (wanda and lowrank cannot be combined" in result.stderr
    assert not (work / "models/pruned").exists()
