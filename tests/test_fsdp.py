"""FSDP2 for real: training stages under `accelerate launch --config_file conf/accelerate/fsdp.yaml` with two
CPU processes (gloo), on the tiny profile's GPT-2 (pretrain, distill, prune recovery) and on a tiny Llama
(pretrain).

Each FSDP run is compared with the same stage as one process: the saved model is a plain `save_pretrained`
folder (safetensors + JSON, no FSDP shard files, no pickles) that loads with `from_pretrained` and holds the
same weights within a stated tolerance. The sharding unit is the model's own block class (`_no_split_modules`),
which the runner logs. accelerate turns FSDP on for GPUs only, so the launch goes through tests/fsdp_cpu.py,
which lifts that one gate (see its docstring); without it lmforge refuses the run rather than train unsharded.
"""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvc_repo import make_repo, read, run
from helpers import free_port
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
              "conf/accelerate/fsdp.yaml", "--num_processes", "2", "--main_process_port", str(free_port())]
FSDP = [*ACCELERATE, "tests/fsdp_cpu.py"]
SINGLE = [sys.executable]
OUTPUT = {"pretrain": "general", "finetune": "teacher", "distill": "student", "prune": "pruned"}
# A tiny Llama as a local pretrained checkpoint (model.init=pretrained), the tiny profile's tokenizer and shape
LLAMA = ["model=smollm2_135m", "model.gguf_file=null", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
         "model.n_positions=64", "student.n_layer=1"]
# Largest weight difference between an FSDP run and one process, relative to the largest weight. The same seeded
# model and global batches, with gradients summed in another order (reduce-scatter over 2 ranks): observed
# 3.4e-7 (GPT-2 pretrain, 6 steps), 2.6e-7 (distill), 6.2e-8 (prune recovery, 3 steps), 1.5e-8 (Llama pretrain)
# on the development machine, with weights up to 1.0; losses equal to 4 decimals.
WEIGHT_RTOL = 1e-5

pytestmark = pytest.mark.slow


def stage(repo: Path, env: dict, name: str, launcher: list[str], tag: str) -> dict:
    """Run one stage, set its model folder and metrics aside under saved/<tag>/<stage>."""
    log = run([*launcher, f"stages/{name}.py"], repo, env)
    saved = repo / "saved" / tag / name
    shutil.copytree(repo / "models" / OUTPUT[name], saved / "model")
    shutil.copy2(repo / f"metrics/{name}.json", saved / "metrics.json")
    return {"log": log, "model": saved / "model", "metrics": read(saved / "metrics.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("fsdp") / "repo"
    env = make_repo(repo, ["profile=tiny"])
    run([sys.executable, "stages/preprocess.py"], repo, env)
    out: dict = {"repo": repo}
    for name in ["pretrain", "distill", "prune"]:
        out[("gpt2", name, "fsdp")] = stage(repo, env, name, FSDP, "fsdp")
        if name == "pretrain":  # the same stage again: its checkpoint is complete, nothing is trained
            out["rerun"] = stage(repo, env, name, FSDP, "fsdp-rerun")
        out[("gpt2", name, "single")] = stage(repo, env, name, SINGLE, "single")
        if name == "pretrain":  # one teacher for both distillations, one student for both prunings
            run([sys.executable, "stages/finetune.py"], repo, env)

    # without the shim: accelerate would train unsharded on a CPU, and lmforge refuses
    refused = subprocess.run([*ACCELERATE, "stages/pretrain.py"], cwd=repo, env=env, capture_output=True, text=True)
    out["refused"] = (refused.returncode, refused.stdout + refused.stderr)

    # a tiny Llama, saved as a pretrained checkpoint with the tokenizer that preprocess trained
    tokenizer = AutoTokenizer.from_pretrained(repo / "data/processed/tokenizer")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    llama = repo.parent / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    run([sys.executable, "-m", "lmforge.compose", "profile=tiny", *LLAMA, f"model.name_or_path={llama}"], repo, env)
    run([sys.executable, "stages/base.py"], repo, env)  # models/base: the Llama; data/processed is unchanged
    out[("llama", "pretrain", "fsdp")] = stage(repo, env, "pretrain", FSDP, "llama-fsdp")
    out[("llama", "pretrain", "single")] = stage(repo, env, "pretrain", SINGLE, "llama-single")
    return out


CASES = [("gpt2", "pretrain", "GPT2Block x2"), ("gpt2", "distill", "GPT2Block x1"), ("gpt2", "prune", "GPT2Block x1"),
         ("llama", "pretrain", "LlamaDecoderLayer x2")]


@pytest.mark.parametrize(("family", "name", "blocks"), CASES)
def test_fsdp_shards_the_models_own_blocks_on_two_processes(runs, family, name, blocks):
    fsdp = runs[(family, name, "fsdp")]
    metrics = fsdp["metrics"]["recovery"] if name == "prune" else fsdp["metrics"]
    assert metrics["processes"] == 2
    (units,) = [line for line in fsdp["log"].splitlines() if f"{name}: FSDP units:" in line]
    assert blocks in units, units  # one unit per block, from the model's _no_split_modules


@pytest.mark.parametrize(("family", "name", "blocks"), CASES)
def test_fsdp_saves_a_plain_folder_with_the_weights_of_one_process(runs, family, name, blocks):
    fsdp, single = runs[(family, name, "fsdp")]["model"], runs[(family, name, "single")]["model"]
    files = sorted(p.name for p in fsdp.iterdir())
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert all(f.endswith((".safetensors", ".json", ".md")) for f in files), files  # no shards, no pickles
    assert files == sorted(p.name for p in single.iterdir())
    with safe_open(fsdp / "model.safetensors", "pt") as f, safe_open(single / "model.safetensors", "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())  # a tied weight is written once, as by one process
    a = AutoModelForCausalLM.from_pretrained(fsdp, use_safetensors=True, trust_remote_code=False).state_dict()
    b = AutoModelForCausalLM.from_pretrained(single, use_safetensors=True, trust_remote_code=False).state_dict()
    assert a.keys() == b.keys()
    scale = max(t.abs().max().item() for t in b.values())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"{family} {name}: largest weight difference {worst:.2e}, largest weight {scale:.3f}")
    assert worst <= WEIGHT_RTOL * scale, f"{family} {name}: weights differ by {worst:.2e} (scale {scale:.2f})"


@pytest.mark.parametrize(("family", "name", "blocks"), CASES)
def test_fsdp_losses_match_one_process(runs, family, name, blocks):
    fsdp, single = runs[(family, name, "fsdp")]["metrics"], runs[(family, name, "single")]["metrics"]
    if name == "prune":
        fsdp, single = fsdp["recovery"], single["recovery"]
    keys = [k for k in single if k == "train_loss" or (k.startswith("eval_") and k.endswith("_loss"))]
    assert "train_loss" in keys and len(keys) >= 2
    for key in keys:
        assert math.isfinite(fsdp[key]) and fsdp[key] == pytest.approx(single[key], rel=1e-3), key


def test_an_fsdp_launch_that_accelerate_would_not_shard_is_refused(runs):
    returncode, output = runs["refused"]
    assert returncode != 0
    assert "accelerate enables FSDP on GPUs only" in output


def test_an_fsdp_rerun_of_a_complete_run_trains_nothing_and_saves_the_same_model(runs):
    first, rerun = runs[("gpt2", "pretrain", "fsdp")], runs["rerun"]
    assert "is the last step of this very run: nothing to train" in rerun["log"]
    assert rerun["metrics"]["steps"] == first["metrics"]["steps"]
    assert (rerun["model"] / "model.safetensors").read_bytes() == (first["model"] / "model.safetensors").read_bytes()
