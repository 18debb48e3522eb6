"""The training stages under `torchrun --nproc_per_node=2` (gloo, CPU) on the tiny profile.

The launcher comes from params.yaml into dvc.yaml's commands; both ranks train (their RNG states are
in the checkpoint, and every rank's tokens are counted); only rank 0 writes; and the result matches a
single-process run with the same global batch.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from dvc_repo import curve_steps, make_repo, read, run
from helpers import free_port

TORCHRUN = "torchrun --nproc_per_node=2"
OVERRIDES = ["profile=tiny", f"launcher='{TORCHRUN}'", "pretrain.max_steps=30", "pretrain.learning_rate=0.005",
             "pretrain.save_steps=30", "pretrain.eval_steps=30", "pretrain.logging_steps=5",
             "distill.max_steps=10", "distill.save_steps=10", "distill.eval_steps=10"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Pretrain and distill under torchrun, then the same stages as one process, outputs set aside for each."""
    repo = tmp_path_factory.mktemp("ddp") / "repo"
    env = make_repo(repo, OVERRIDES)
    run([sys.executable, "stages/preprocess.py"], repo, env)
    commands = run([sys.executable, "-c", "import json; from dvc.repo import Repo; "
                    "print(json.dumps({s.name: s.cmd for s in Repo('.').index.stages}))"], repo, env)
    out = {"repo": repo, "commands": json.loads(commands.strip().splitlines()[-1])}
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={free_port()}"]
    for launcher, name in [(torchrun, "ddp"), ([sys.executable], "single")]:
        out[name] = {}
        for stage in ["pretrain", "finetune", "distill"]:
            cmd = (torchrun if stage != "finetune" else [sys.executable]) if name == "ddp" else launcher
            if stage == "finetune" and name == "single":
                continue  # the same teacher serves both distillations
            log = run([*cmd, f"stages/{stage}.py"], repo, env)
            saved = repo / "saved" / name / stage
            shutil.copytree(repo / f"checkpoints/{stage}", saved / "checkpoints")
            shutil.copy2(repo / f"metrics/{stage}.json", saved / "metrics.json")
            out[name][stage] = {"log": log, "dir": saved, "metrics": read(saved / "metrics.json"),
                                "curve": curve_steps(repo, stage)}
    return out


def test_dvc_yaml_starts_the_training_stages_with_the_configured_launcher(runs):
    commands = runs["commands"]  # as `dvc repro` runs them, with params.yaml's `launcher` interpolated
    for stage in ["pretrain", "finetune", "distill", "prune"]:
        assert commands[stage] == f"{TORCHRUN} stages/{stage}.py"
    assert commands["preprocess"] == "python stages/preprocess.py"


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_both_ranks_train_and_only_rank_zero_writes(runs, stage):
    ddp, single = runs["ddp"][stage], runs["single"][stage]
    assert ddp["metrics"]["processes"] == 2 and single["metrics"]["processes"] == 1
    (checkpoint,) = ddp["dir"].glob("checkpoints/checkpoint-*")
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    state = read(checkpoint / "trainer_state.json")
    (single_checkpoint,) = single["dir"].glob("checkpoints/checkpoint-*")
    # every rank's tokens are counted: two ranks of half the batch see as many tokens as one process
    assert state["num_input_tokens_seen"] == read(single_checkpoint / "trainer_state.json")["num_input_tokens_seen"]
    assert state["global_step"] == ddp["metrics"]["steps"]
    # metrics and curves are written once
    assert ddp["log"].count(f"wrote metrics/{stage}.json") == 1
    assert ddp["curve"] == sorted(set(ddp["curve"])) and ddp["curve"][-1] == ddp["metrics"]["steps"]
    assert not list((runs["repo"] / "models").glob(".*")), "a temporary artifact was left behind"


def test_ddp_pretraining_learns_as_much_as_one_process_with_the_same_global_batch(runs):
    ddp, single = runs["ddp"]["pretrain"]["metrics"], runs["single"]["pretrain"]["metrics"]
    vocab = 400  # profile=tiny; an untrained model's loss is about ln(vocab)
    assert ddp["eval_general_loss"] < math.log(vocab) - 0.5, "the saved model is no better than its initialisation"
    # same seeded initial model, same global batches (rank r takes every other example of the shuffled batch):
    # the same optimisation, up to the order of floating-point sums (equal to 4 decimals on the development machine)
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)
    assert ddp["eval_general_loss"] == pytest.approx(single["eval_general_loss"], rel=1e-3)


def test_ddp_distillation_matches_one_process(runs):
    ddp, single = runs["ddp"]["distill"]["metrics"], runs["single"]["distill"]["metrics"]
    for key in ["train_loss", "eval_domain_loss", "eval_task_loss"]:
        assert ddp[key] == pytest.approx(single[key], rel=1e-3), key
