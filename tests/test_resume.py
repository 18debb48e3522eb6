"""A pretrain run killed (SIGKILL) after a checkpoint resumes from it on the next `dvc repro`.

The checkpoint folder and dvclive/pretrain are DVC `persist` outputs, so they survive the rerun; the
Trainer restores model, optimizer, scheduler, RNG and the dataloader position; DVCLive continues its
step counter, and the curves hold each optimizer step once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from dvc_repo import curve_steps, make_repo, run

MAX_STEPS = 120  # ~100 steps after the first checkpoint: time to kill the run before it ends
SAVE_STEPS = 20
OVERRIDES = ["profile=tiny", f"pretrain.max_steps={MAX_STEPS}", f"pretrain.save_steps={SAVE_STEPS}",
             "pretrain.logging_steps=5", f"pretrain.eval_steps={MAX_STEPS}"]

pytestmark = pytest.mark.slow


def kill_after_first_checkpoint(repo, env) -> int:
    """Start `dvc repro pretrain`, SIGKILL its process group once a checkpoint is complete (the Trainer writes
    trainer_state.json last); the step of the last complete checkpoint. The kill may hit the writing of the
    next one: that half-written checkpoint must not be resumed."""
    proc = subprocess.Popen(["dvc", "repro", "pretrain"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not any(
                readable(state) for state in (repo / "checkpoints/pretrain").glob("checkpoint-*/trainer_state.json")):
            time.sleep(0.02)
        assert proc.poll() is None, "pretrain ended before it could be killed mid-run"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return max(int(state.parent.name.split("-")[1])
               for state in (repo / "checkpoints/pretrain").glob("checkpoint-*/trainer_state.json")
               if readable(state))


def readable(path) -> bool:
    """The kill may cut trainer_state.json itself short: such a checkpoint is not complete (and not resumed)."""
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def test_a_killed_pretrain_resumes_from_its_checkpoint_and_ends_at_max_steps(tmp_path):
    repo = tmp_path / "repo"
    env = make_repo(repo, OVERRIDES)
    run(["dvc", "repro", "preprocess"], repo, env)
    killed_at = kill_after_first_checkpoint(repo, env)
    assert 0 < killed_at < MAX_STEPS
    assert not (repo / "models/general").exists() and not (repo / "metrics/pretrain.json").exists()

    output = run(["dvc", "repro", "pretrain"], repo, env)
    assert f"resuming from checkpoints/pretrain/checkpoint-{killed_at}" in output
    metrics = json.loads((repo / "metrics/pretrain.json").read_text())
    assert metrics["resumed_from_step"] == killed_at
    assert metrics["steps"] == MAX_STEPS
    (final,) = (repo / "checkpoints/pretrain").glob("checkpoint-*")
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # DVCLive continued its curves: every logged step once, in order, from the first to the last
    steps = curve_steps(repo, "pretrain")
    assert steps == list(range(5, MAX_STEPS + 1, 5))
    assert json.loads((repo / "dvclive/pretrain/metrics.json").read_text())["step"] == MAX_STEPS
    assert (repo / "models/general/model.safetensors").is_file()
    assert "up to date" in run(["dvc", "repro", "pretrain"], repo, env)

    # the same run without interruption: same initial model (seeded), same data (dataloader position restored),
    # same optimizer and schedule: the same losses at every logged step, to the last bit
    resumed_curve = (repo / "dvclive/pretrain/plots/metrics/loss.tsv").read_text()
    shutil.rmtree(repo / "checkpoints/pretrain")
    run([sys.executable, "stages/pretrain.py"], repo, env)
    whole = json.loads((repo / "metrics/pretrain.json").read_text())
    (final,) = (repo / "checkpoints/pretrain").glob("checkpoint-*")
    assert json.loads((final / "trainer_state.json").read_text())["num_input_tokens_seen"] == \
        state["num_input_tokens_seen"]
    assert whole["resumed_from_step"] == 0
    assert (repo / "dvclive/pretrain/plots/metrics/loss.tsv").read_text() == resumed_curve
    assert whole["eval_general_loss"] == metrics["eval_general_loss"]
    # the resumed run reports the whole run: the same mean training loss, and a throughput that counts the
    # steps trained before the kill with their time (it overstated ~50x when only the tail's time counted)
    assert whole["train_loss"] == metrics["train_loss"]
    assert metrics["train_tokens_per_s"] <= 3 * whole["train_tokens_per_s"]
