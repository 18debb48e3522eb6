"""Issue 19, items 2, 3 and 7 (locks): params.yaml is never rewritten while a stage runs, a stage checks it
before it replaces an output, `dvc exp run` is refused while a stage runs (and the workspace kept), every stage
that writes a model or the data takes its lock, and the next run sweeps what a killed one left."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_repo import make_repo

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def hold_lock(cwd: Path, stage: str) -> subprocess.Popen:
    """A live process holding `stage`'s lock in `cwd`, as a running stage does."""
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom lmforge.locks import lock_stage\n"
                               f"held = lock_stage({stage!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=cwd, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.kill()
    holder.wait()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "ERROR: "))]


# --- item 2: make params refuses while any stage runs ---------------------------------------------------


def test_make_params_refuses_while_a_stage_holds_its_lock(tmp_path):
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = {p: (tmp_path / p).read_bytes() for p in ("params.yaml", "conf/make_params.yaml")}
    holder = hold_lock(tmp_path, "finetune")
    try:
        for args in (["profile=tiny"], ["--keep"]):
            result = subprocess.run([sys.executable, "-m", "lmforge.compose", *args], cwd=tmp_path, env=ENV,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 2, result.stdout + result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert f"a stage is running (finetune (pid {holder.pid}" in result.stderr
            assert {p: (tmp_path / p).read_bytes() for p in before} == before
    finally:
        release(holder)
    # the holder is gone: its lock is free again
    result = subprocess.run([sys.executable, "-m", "lmforge.compose", "profile=tiny"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- item 2: a stage checks params.yaml before it replaces an output --------------------------------------


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_stage_does_not_replace_an_output_once_params_yaml_was_rewritten(tmp_path, monkeypatch, capsys, kind):
    from lmforge import stage
    from lmforge.artifacts import atomic_dir, write_text

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/prune.py"])
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "models/pruned").mkdir(parents=True)
    (tmp_path / "models/pruned/weights").write_text("old")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/prune.json").write_text("old")

    def main():
        (tmp_path / "params.yaml").write_text("seed: 2\n")  # `make params` / `dvc exp run` meanwhile
        if kind == "file":
            write_text(tmp_path / "metrics/prune.json", "new")
        else:
            with atomic_dir(tmp_path / "models/pruned") as out:
                (out / "weights").write_text("new")

    with pytest.raises(SystemExit) as exit_:
        stage.run(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "params.yaml was rewritten while the prune stage ran" in err and "not replaced" in err
    assert (tmp_path / "metrics/prune.json").read_text() == "old"
    assert (tmp_path / "models/pruned/weights").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["pruned"]  # the new one discarded
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["prune.json"]


# --- item 3: dvc exp run while a stage runs --------------------------------------------------------------


@pytest.mark.slow
def test_dvc_exp_run_is_refused_while_a_stage_runs_and_keeps_the_uncommitted_parameters(tmp_path):
    repo = tmp_path / "repo"
    env = make_repo(repo, ["profile=tiny"])
    # uncommitted settings of the user: what DVC's failed stash apply used to reset to HEAD
    subprocess.run([sys.executable, "-m", "lmforge.compose", "profile=tiny", "prune.ffn=0.6"], cwd=repo, env=env,
                   check=True, capture_output=True)
    before = {p: (repo / p).read_bytes() for p in ("params.yaml", "conf/make_params.yaml")}
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom lmforge.locks import lock_stage\n"
                               "held = lock_stage('pretrain'); print('held', flush=True); time.sleep(120)"],
                              cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run(["dvc", "exp", "run", "-S", "prune.ffn=0.5"], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=300)
    finally:
        release(holder)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Running stage" not in output and "Traceback" not in output
    (line,) = error_lines(output)
    assert f"a stage is running (pretrain (pid {holder.pid}" in line
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert subprocess.run(["git", "stash", "list"], cwd=repo, env=env, capture_output=True, text=True).stdout == ""
    assert not (repo / "dvc.lock").exists()


# --- item 7: every stage that writes a model or the data holds its lock ----------------------------------


@pytest.mark.parametrize("stage", ["preprocess", "quantize", "evaluate"])
def test_a_second_instance_of_a_non_training_stage_is_refused(tmp_path, stage):
    from lmforge.compose import compose

    compose(tmp_path / "params.yaml", ["profile=tiny"], conf_dir=ROOT / "conf")
    holder = hold_lock(tmp_path, stage)
    try:
        result = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=300)
    finally:
        release(holder)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert f"is in use by another {stage} run (pid {holder.pid}" in line
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "data").exists()


def test_the_next_run_of_a_stage_sweeps_the_temporary_folders_a_killed_run_left(tmp_path, monkeypatch):
    from lmforge.locks import lock_stage, release_stage

    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        models = tmp_path / "models"
        left = [models / f".general.tmp-{dead.pid}-x1y2", models / ".general.tmp-trained",
                models / f".general.old-{dead.pid}", models / ".general.tmp-q8z_k3"]  # the last: an older name
        kept = [models / "general", models / f".general.tmp-{live.pid}-a1b2",  # a live writer's
                models / f".teacher.tmp-{dead.pid}-c3d4"]  # another stage's (finetune sweeps it)
        for folder in left + kept:
            (folder / "sub").mkdir(parents=True)
            (folder / "sub" / "model.safetensors").write_bytes(b"x")
        handle = lock_stage("pretrain")
        release_stage(handle)
    finally:
        live.kill()
        live.wait()
    assert not [p for p in left if p.exists()]
    assert all(p.exists() for p in kept)


# --- item 7: model.safetensors follows the umask ----------------------------------------------------------


def test_weights_written_by_safetensors_get_the_mode_of_the_umask(tmp_path):
    script = ("import os, sys\nos.umask(0o022)\nimport torch\nfrom safetensors.torch import save_file\n"
              "from lmforge.artifacts import atomic_dir\n"
              "with atomic_dir(sys.argv[1] + '/models/pruned') as out:\n"
              "    save_file({'w': torch.zeros(2)}, str(out / 'model.safetensors'))\n"
              "    (out / 'sub').mkdir()\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=ENV, check=True)
    assert (tmp_path / "models/pruned/model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "models/pruned").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "models/pruned/sub").stat().st_mode & 0o777 == 0o755


# --- item 7: the divergence warning is in the stage's metrics ---------------------------------------------


def test_a_diverging_run_says_so_in_its_metrics_also_when_rerun(tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from lmforge.config import TrainConfig
    from lmforge.training.runner import fit

    monkeypatch.chdir(tmp_path)
    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")),
                                        pad_token="t0", eos_token="t0")
    ids = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(0)).tolist()
    blocks = Dataset.from_dict({"input_ids": ids})
    # learning_rate=1.0, as reported: the loss climbs from ~4 to ~20-30 and stays finite
    cfg = TrainConfig(max_steps=8, batch_size=4, grad_accum_steps=1, learning_rate=1.0,
                      lr_scheduler="constant_with_warmup", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                      logging_steps=1, eval_steps=8, save_steps=8, eval_max_examples=4, precision="fp32",
                      attn_implementation="sdpa", optim="adamw_torch", torch_compile=False, sampling="random")
    runs = []
    for _ in range(2):  # the second: a rerun of the complete run, which trains nothing
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
        runs.append(fit("pretrain", model, tokenizer, blocks, {"general": blocks.select(range(4))}, cfg, 0, "run",
                        None))
    for metrics in runs:
        assert metrics["diverged"] is True
        (warning,) = metrics["warnings"]
        assert warning.startswith("pretrain: training loss") and "diverging" in warning
    assert runs[1]["resumed_from_step"] == 8 and runs[1]["warnings"] == runs[0]["warnings"]
