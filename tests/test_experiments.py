"""Experiments and a DVC remote as a user runs them: a readable `dvc exp show`, a queued sweep, and the loop
between a box that trains and a laptop that pulls (docs/remote.md).

The "GPU box" is a copy of the session's tiny run (the chain ran once on profile=tiny and was committed), its
models pushed to a directory remote added with `dvc remote add --local` (.dvc/config.local, which DVC keeps out
of git, so the tracked files do not change). The sweep's experiments run in DVC's temporary workspaces, which
hold only git- and DVC-tracked files, so it also checks that the pipeline needs nothing else. The "laptop" is a
`git clone` that has never run a stage: after `dvc pull` it must be up to date and `lmforge predict` must give
the box's predictions; an experiment of the sweep travels the same way (`dvc exp push` / `dvc exp pull`)
through a shared bare git repository.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dvc_repo import run, stages_run

pytestmark = pytest.mark.slow

HEADLINE = "metrics/headline.json"
REMOTE = "store"  # the DVC remote's name, in both clones
REVIEWS = ["a great film, I loved it", "not good at all", "boring and far too long"]


@pytest.fixture(scope="module")
def box(tiny_run_copy, tmp_path_factory) -> tuple[Path, dict, Path]:
    """The tiny run's models and data pushed to a directory remote: (repository, environment, remote)."""
    repo, env, _ = tiny_run_copy
    storage = tmp_path_factory.mktemp("dvc-remote")
    tracked = run(["git", "status", "--porcelain"], repo, env)
    run(["dvc", "remote", "add", "--local", "--force", REMOTE, str(storage)], repo, env)
    run(["dvc", "push", "-r", REMOTE], repo, env)
    assert run(["git", "status", "--porcelain"], repo, env) == tracked, "the remote changed tracked files"
    return repo, env, storage


@pytest.fixture(scope="module")
def sweep(box) -> dict:
    """A queued sweep of one quantize parameter (int8 in blocks of 16 or 32 input channels, each block its own
    scale), run by DVC's queue worker: {block_size: (experiment name, headline metrics, the run's log)}. No
    `-S profile=tiny`: the run's `make params` overrides (conf/make_params.yaml, committed) are composed too."""
    repo, env, _ = box
    out = run(["dvc", "exp", "run", "--queue", "-S", "quantize.block_size=16,32"], repo, env)
    assert out.count("Queued experiment") == 2
    run(["dvc", "queue", "start"], repo, env)
    try:
        deadline = time.monotonic() + 900
        while True:
            status = run(["dvc", "queue", "status"], repo, env)
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, f"the queue did not finish in 15 minutes:\n{status}"
            time.sleep(3)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True)
    assert status.count("Success") == 2, status

    experiments = {}
    for baseline in json.loads(run(["dvc", "exp", "show", "--json"], repo, env)):
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            params = data["params"]["params.yaml"]["data"]
            assert params["model"]["n_embd"] == 32  # still the tiny model
            experiments[params["quantize"]["block_size"]] = (exp["name"], data["metrics"][HEADLINE]["data"],
                                                             run(["dvc", "queue", "logs", exp["name"]], repo, env))
    return experiments


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


def test_the_only_dvc_metrics_are_the_headline_numbers(box):
    repo, env, _ = box
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))
    files = {name for data in shown.values() for name in data["data"]}
    assert files == {HEADLINE}
    headline = json.loads((repo / HEADLINE).read_text())
    assert set(headline["quantized"]) == {"accuracy", "validation_accuracy", "ppl_general", "ppl_domain", "mb",
                                          "p50_ms", "speedup"}
    assert headline["recommended"] in ("teacher", "student", "pruned", "quantized")
    # the detailed records are still there for whoever reads them
    assert "sources" in json.loads((repo / "metrics/preprocess.json").read_text())
    columns = run(["dvc", "exp", "show", "--csv"], repo, env).splitlines()[0].split(",")
    numbers = {"accuracy", "validation_accuracy", "ppl_general", "ppl_domain", "mb", "p50_ms", "speedup"}
    metric_columns = [c for c in columns if c == "recommended" or c.rsplit(".", 1)[-1] in numbers]
    assert len(metric_columns) == 7 * 5 + 2 + 1  # was 230 metric columns (384 in all) before headline.json


def test_a_fresh_clone_pulls_the_models_and_reruns_nothing(box, tmp_path):
    repo, env, storage = box
    clone, clone_env = laptop(tmp_path, repo, env, storage)
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
    assert predict(clone, clone_env) == predict(repo, env)


def test_a_queued_sweep_runs_both_experiments_and_reruns_quantize_and_evaluate_only(sweep):
    assert set(sweep) == {16, 32}
    for _, _, log in sweep.values():
        # validate reads all of params.yaml and always reruns; its output is the same bytes, so nothing follows it
        assert stages_run(log) == ["validate", "quantize", "evaluate"], log
    (_, fine, _), (_, coarse, _) = sweep[16], sweep[32]
    assert fine["quantized"]["mb"] > coarse["quantized"]["mb"]  # twice the scales
    assert fine["quantized"]["ppl_domain"] != coarse["quantized"]["ppl_domain"]
    for name in ("teacher", "pruned"):  # the models upstream of quantize are the same
        for key in ("accuracy", "ppl_domain", "mb"):
            assert fine[name][key] == coarse[name][key], (name, key)


def test_an_experiment_travels_with_dvc_exp_push_and_pull(box, sweep, tmp_path):
    repo, env, storage = box
    name = sweep[16][0]
    hub = tmp_path / "hub.git"  # the git server both sides use
    run(["git", "clone", "-q", "--bare", str(repo), str(hub)], tmp_path, env)
    try:
        run(["dvc", "exp", "push", "-r", REMOTE, str(hub), name], repo, env)

        clone, clone_env = laptop(tmp_path, hub, env, storage)
        run(["dvc", "exp", "pull", "-r", REMOTE, "origin", name], clone, clone_env)
        assert name in run(["dvc", "exp", "list", "--name-only"], clone, clone_env)
        run(["dvc", "exp", "apply", name], clone, clone_env)  # its params, metrics, dvc.lock and models
        run(["dvc", "pull", "-r", REMOTE], clone, clone_env)  # anything the apply could not check out from cache
        assert "Data and pipelines are up to date" in run(["dvc", "status"], clone, clone_env)
        repro = run(["dvc", "repro"], clone, clone_env)
        assert stages_run(repro) == [], repro
        # the experiment's own int8 model, not the baseline's
        assert yaml.safe_load((clone / "params.yaml").read_text())["quantize"]["block_size"] == 16
        assert lock_md5(clone, "quantize", "models/quantized") != lock_md5(repo, "quantize", "models/quantized")
        assert len(predict(clone, clone_env)) == len(REVIEWS)
    finally:
        shutil.rmtree(hub, ignore_errors=True)
