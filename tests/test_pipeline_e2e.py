"""The whole pipeline under DVC, on the smallest profiles, in a temporary copy of the repository.

`dvc repro` runs every stage (the session's `tiny_run`); a second `dvc repro` runs none (an experiment on one
quantize parameter reruns quantize and evaluate only: tests/test_experiments.py). The tiny encoder (BERT, MLM + NSP,
a classifier head, hidden-state KD) runs the same DAG.
"""

import json
from pathlib import Path

import pytest
from dvc_repo import make_repo, run, stages_run

STAGES = ["validate", "base", "preprocess", "pretrain", "finetune", "transfer", "distill", "prune", "quantize",
          "evaluate"]

pytestmark = pytest.mark.slow


def test_repro_runs_every_stage_then_nothing(tiny_run, tiny_run_copy):
    first = tiny_run.output  # the committed run: every stage ran once
    path, env, _ = tiny_run_copy  # a copy, to run DVC in
    assert stages_run(first) == STAGES
    for name in ["general", "teacher", "student", "pruned", "quantized"]:
        assert (path / "models" / name / "config.json").is_file()
    results = json.loads((path / "metrics/evaluate.json").read_text())
    assert set(results["models"]) == {"general", "teacher", "student", "pruned", "quantized"}
    assert (path / "reports/summary.md").is_file() and (path / "reports/pareto.png").stat().st_size > 0
    assert not list(path.glob("models/.*tmp*")), "a temporary artifact was left behind"
    models = results["models"]
    # each technique did what it claims, measured on the artifacts
    prune = json.loads((path / "metrics/prune.json").read_text())  # the default: structured, half the FFN
    assert prune["methods"]["structured"]["ffn_channels"] == {"before": 128, "after": 64}
    assert prune["after"]["params"] < prune["before"]["params"]
    assert models["pruned"]["parameters"] == prune["after"]["params"] < models["student"]["parameters"]
    assert models["pruned"]["bytes_on_disk"] < models["student"]["bytes_on_disk"]
    quantize = json.loads((path / "metrics/quantize.json").read_text())
    assert quantize["coverage"] >= 0.95
    assert models["quantized"]["bytes_on_disk"] < models["student"]["bytes_on_disk"]
    assert models["student"]["non_embedding_parameters"] <= 0.6 * models["teacher"]["non_embedding_parameters"]

    second = run(["dvc", "repro"], path, env)
    assert stages_run(second) == []
    assert "up to date" in second


@pytest.fixture(scope="module")
def encoder_repo(tmp_path_factory) -> tuple[Path, dict]:
    """A git repository holding the project's files (committed or not), with params.yaml for tiny_encoder."""
    dest = tmp_path_factory.mktemp("e2e-tiny_encoder") / "repo"
    return dest, make_repo(dest, ["profile=tiny_encoder"])


def test_the_encoder_chain_runs_every_stage_then_nothing(encoder_repo):
    path, env = encoder_repo
    first = run(["dvc", "repro"], path, env)
    assert stages_run(first) == STAGES
    kinds = {name: json.loads((path / "models" / name / "config.json").read_text())["architectures"][0]
             for name in ["general", "teacher", "student", "pruned", "quantized"]}
    assert kinds == {"general": "BertForPreTraining", "teacher": "BertForSequenceClassification",
                     "student": "BertForSequenceClassification", "pruned": "BertForSequenceClassification",
                     "quantized": "BertForSequenceClassification"}
    models = json.loads((path / "metrics/evaluate.json").read_text())["models"]
    general = models["general"]  # an encoder without a task head: masked-token perplexity and NSP accuracy
    assert general["ppl_kind"] == "masked-token" and general["ppl_general"] > 1 and 0 <= general["nsp_accuracy"] <= 1
    assert general["accuracy"] is None
    for name in ["teacher", "student", "pruned", "quantized"]:  # classifiers: accuracy, no perplexity
        assert 0 <= models[name]["accuracy"] <= 1 and models[name]["ppl_general"] is None
    distill = json.loads((path / "metrics/distill.json").read_text())
    assert distill["train_loss_terms"]["hidden_loss"] > 0  # alpha_hidden > 0: the term is trained and reported
    prune = json.loads((path / "metrics/prune.json").read_text())
    assert prune["methods"]["structured"]["ffn_channels"] == {"before": 128, "after": 64}
    quantize = json.loads((path / "metrics/quantize.json").read_text())
    assert quantize["coverage"] >= 0.95
    assert models["quantized"]["bytes_on_disk"] < models["pruned"]["bytes_on_disk"] < models["student"]["bytes_on_disk"]
    summary = (path / "reports/summary.md").read_text()
    assert "(masked)" in summary and "next-sentence accuracy" in summary

    second = run(["dvc", "repro"], path, env)
    assert stages_run(second) == []
