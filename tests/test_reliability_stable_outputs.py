"""Issue 19, item 1: every output folder is a pure function of its stage's inputs. A rerun that trains
nothing (a forced rerun of a complete run) leaves every output's hash as it was, so nothing downstream
reruns; run-dependent numbers (probe timings, run times, throughput, the resumed step) live in
metrics/<stage>.json only, never in a model folder's card."""

import json

import pytest
import yaml
from dvc_repo import run

from lmforge.modeling.card import card_metrics, model_card


def outs_of(repo, stage: str) -> dict[str, str]:
    """Each output of `stage` in dvc.lock with its hash (md5 of a file, of the listing of a folder)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


@pytest.mark.slow
def test_a_forced_rerun_of_a_complete_training_stage_changes_no_output_and_nothing_downstream(tiny_run_copy):
    """On the committed tiny run (every stage up to date, the pretrain checkpoint complete): `dvc status` before
    and after the forced rerun covers every stage downstream of pretrain, not only pretrain's own outputs."""
    repo, env, _ = tiny_run_copy
    before = outs_of(repo, "pretrain")
    card = (repo / "models/general/README.md").read_bytes()
    status = run(["dvc", "status", "--json"], repo, env)

    output = run(["dvc", "repro", "--force", "--single-item", "pretrain"], repo, env)
    assert "Running stage 'pretrain'" in output and "nothing to train" in output
    after = outs_of(repo, "pretrain")
    # the stage's detailed record may differ (its own probe and times); every other output must not
    changed = [path for path in before if path.startswith("metrics/") is False and before[path] != after[path]]
    assert not changed, f"a forced rerun that trained nothing changed {changed}"
    assert (repo / "models/general/README.md").read_bytes() == card
    # finetune and the rest see the same inputs as before: dvc status says the same as before the rerun
    assert json.loads(run(["dvc", "status", "--json"], repo, env)) == json.loads(status)
    assert "precision" in json.loads((repo / "metrics/pretrain.json").read_text())  # the timings live here


def test_the_model_card_carries_no_run_dependent_number(tmp_path):
    """Two runs of the same inputs differ in timings, the resumed step and the probe: their cards must not."""
    first = {"steps": 6, "resumed_from_step": 0, "train_loss": 5.1, "train_runtime_s": 3.2,
             "train_tokens_per_s": 810.0, "eval_general_perplexity": 160.2,
             "precision": {"requested": "auto", "precision": "fp32", "probe": {"fp32_ms": 1.2, "bf16_ms": 3.4,
                                                                               "bf16_speedup": 0.353}},
             "latency_p50_ms": 2.5, "speedup_p50": 1.7, "started": "2026-12-07 12:00:00", "loadavg_1m": 1.5}
    second = {**first, "resumed_from_step": 6, "train_runtime_s": 3.9, "train_tokens_per_s": 640.0,
              "precision": {**first["precision"], "probe": {"fp32_ms": 1.5, "bf16_ms": 3.0, "bf16_speedup": 0.5}},
              "latency_p50_ms": 2.9, "speedup_p50": 1.2, "started": "2026-12-08 09:00:00", "loadavg_1m": 0.2}
    cards = {model_card(tmp_path, "pretrain", {}, m, None) for m in (first, second)}
    assert len(cards) == 1
    kept = card_metrics(first)
    assert kept == {"steps": 6, "train_loss": 5.1, "eval_general_perplexity": 160.2}


@pytest.mark.slow
def test_a_forced_rerun_of_distill_keeps_the_student_folder_byte_for_byte(tiny_run_copy):
    """distill's card carries the KD / CE loss terms of the last log; a rerun that resumes the complete run
    reads them back from the checkpoint's log, in another order: the card must not change with it."""
    repo, env, _ = tiny_run_copy
    before = outs_of(repo, "distill")
    card = (repo / "models/student/README.md").read_bytes()
    output = run(["dvc", "repro", "--force", "--single-item", "distill"], repo, env)
    assert "Running stage 'distill'" in output and "nothing to train" in output
    assert (repo / "models/student/README.md").read_bytes() == card
    after = outs_of(repo, "distill")
    assert after["models/student"] == before["models/student"]
