"""A DVC remote, end to end: the box that ran the pipeline pushes, a fresh clone pulls and is up to date.

The "GPU box" is `tiny_run_copy`, a copy of the session's tiny run (the chain ran once on profile=tiny and was
committed); the
remote is a local directory, added with `dvc remote add --local` (written to .dvc/config.local, which DVC
keeps out of git, so the fixture's tracked files do not change). The "laptop" is a `git clone` of that
commit that has never run a stage: after `dvc pull` it must be up to date (`dvc status`, and a `dvc repro`
that runs nothing) and `lmforge predict models/quantized` must give the box's predictions. Experiments travel
the same way (`dvc exp push` / `dvc exp pull`) through a shared bare git repository.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_repo import run, stages_run

pytestmark = pytest.mark.slow

REMOTE = "store"  # the DVC remote's name, in both clones
REVIEWS = ["a great film, I loved it", "not good at all", "boring and far too long"]
EXPERIMENT = "remote-exp"


def predict(repo: Path, env: dict) -> list[dict]:
    """`lmforge predict models/quantized ...` as the user runs it, its JSON lines (full-precision probabilities)."""
    out = repo.parent / f"predictions-{repo.name}.jsonl"
    run([sys.executable, "-m", "lmforge", "predict", "models/quantized", *REVIEWS, "--output", str(out)], repo, env)
    return [json.loads(line) for line in out.read_text().splitlines()]


def laptop(tmp_path: Path, source: Path | str, env: dict, storage: Path) -> tuple[Path, dict]:
    """A fresh `git clone` with the remote configured (locally, as a user would) and nothing pulled yet."""
    clone = tmp_path / "laptop"
    run(["git", "clone", "-q", str(source), str(clone)], tmp_path, env)
    env = {**env, "PYTHONPATH": str(clone / "src")}
    run(["dvc", "remote", "add", "--local", REMOTE, str(storage)], clone, env)
    return clone, env


def lock_md5(repo: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


@pytest.fixture(scope="module")
def pushed(tiny_run_copy, tmp_path_factory) -> tuple[Path, dict, Path]:
    """The box's models and data pushed to a directory remote."""
    box, env, _ = tiny_run_copy
    storage = tmp_path_factory.mktemp("dvc-remote")
    tracked = run(["git", "status", "--porcelain"], box, env)
    run(["dvc", "remote", "add", "--local", "--force", REMOTE, str(storage)], box, env)
    run(["dvc", "push", "-r", REMOTE], box, env)
    assert run(["git", "status", "--porcelain"], box, env) == tracked, "the remote changed tracked files"
    return box, env, storage


def test_a_fresh_clone_pulls_the_models_and_reruns_nothing(pushed, tmp_path):
    box, env, storage = pushed
    clone, clone_env = laptop(tmp_path, box, env, storage)
    assert not (clone / "models").exists() and not (clone / "data/processed").exists()
    run(["dvc", "pull", "-r", REMOTE], clone, clone_env)
    # what the pull brought: every cached output of dvc.yaml, the models of the chain and the processed data
    for name in ["base", "general", "teacher", "student", "pruned", "quantized"]:
        assert (clone / "models" / name).is_dir(), name
    assert (clone / "data/processed/tokenizer").is_dir()
    # what git brought: metrics, curves and dvc.lock
    assert (clone / "metrics/headline.json").is_file() and (clone / "dvc.lock").is_file()

    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone, clone_env)
    assert f"Cache and remote '{REMOTE}' are in sync" in run(["dvc", "status", "-c", "-r", REMOTE], clone, clone_env)
    repro = run(["dvc", "repro"], clone, clone_env)
    assert stages_run(repro) == [], repro
    assert predict(clone, clone_env) == predict(box, env)


def test_an_experiment_travels_with_dvc_exp_push_and_pull(pushed, tmp_path):
    box, env, storage = pushed
    hub = tmp_path / "hub.git"  # the git server both sides use
    run(["git", "clone", "-q", "--bare", str(box), str(hub)], tmp_path, env)
    # one cheap experiment on the box, in a temporary workspace (the fixture's workspace is left as it is):
    # a quantize parameter, so only validate, quantize and evaluate run. No `-S profile=tiny`: the run's
    # `make params` overrides (conf/make_params.yaml, committed with it) are composed by DVC too.
    out = run(["dvc", "exp", "run", "--temp", "-n", EXPERIMENT, "-S", "quantize.per_channel=false"], box, env)
    assert stages_run(out) == ["validate", "quantize", "evaluate"], out
    try:
        run(["dvc", "exp", "push", "-r", REMOTE, str(hub), EXPERIMENT], box, env)

        clone, clone_env = laptop(tmp_path, hub, env, storage)
        run(["dvc", "exp", "pull", "-r", REMOTE, "origin", EXPERIMENT], clone, clone_env)
        assert EXPERIMENT in run(["dvc", "exp", "list", "--name-only"], clone, clone_env)
        run(["dvc", "exp", "apply", EXPERIMENT], clone, clone_env)  # its params, metrics, dvc.lock and models
        run(["dvc", "pull", "-r", REMOTE], clone, clone_env)  # anything the apply could not check out from cache
        assert "Data and pipelines are up to date" in run(["dvc", "status"], clone, clone_env)
        repro = run(["dvc", "repro"], clone, clone_env)
        assert stages_run(repro) == [], repro
        # the experiment's own int8 model, not the baseline's
        params = yaml.safe_load((clone / "params.yaml").read_text())
        assert params["quantize"]["per_channel"] is False and params["model"]["n_embd"] == 32  # still tiny
        assert lock_md5(clone, "quantize", "models/quantized") != lock_md5(box, "quantize", "models/quantized")
        predictions = predict(clone, clone_env)
        assert len(predictions) == len(REVIEWS)
    finally:
        subprocess.run(["dvc", "exp", "remove", EXPERIMENT], cwd=box, env=env, capture_output=True)
        shutil.rmtree(hub, ignore_errors=True)
