"""The whole pipeline under DVC, on the smallest profile, in a temporary copy of the repository.

`dvc repro` runs every stage; a second `dvc repro` runs none; an experiment that changes one
quantize parameter reruns quantize and evaluate only.
"""

import json
from pathlib import Path

import pytest
from dvc_repo import make_repo, run, stages_run

STAGES = ["validate", "base", "preprocess", "pretrain", "finetune", "distill", "prune", "quantize", "evaluate"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    """A git repository holding the project's files (committed or not), with params.yaml for profile=tiny."""
    dest = tmp_path_factory.mktemp("e2e") / "repo"
    return dest, make_repo(dest, ["profile=tiny"])


def test_repro_runs_every_stage_then_nothing(repo):
    path, env = repo
    first = run(["dvc", "repro"], path, env)
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


def test_an_experiment_on_one_quantize_parameter_reruns_quantize_and_evaluate_only(repo):
    path, env = repo
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "first run"], path, env)
    # no `-S profile=tiny`: make_repo set it with `make params` (conf/make_params.yaml), which DVC composes too
    output = run(["dvc", "exp", "run", "-S", "quantize.per_channel=false"], path, env)
    assert stages_run(output) == ["validate", "quantize", "evaluate"]
    assert "per_channel: false" in (path / "params.yaml").read_text()
    assert "n_embd: 32" in (path / "params.yaml").read_text()  # still the tiny model
    quantize = json.loads((path / "metrics/quantize.json").read_text())
    assert quantize["coverage"] >= 0.95
