"""Issue 7: failures keep the last good outputs, reruns are exact, NaN stops the run, concurrent runs
are refused, and the smaller promises of the README hold. One test (or a few) per numbered item."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_repo import stages_run
from helpers import ROOT, compose_into, run_stage, stage_env, tiny_gpt2


def snapshot(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), keyed by relative path."""
    out = {}
    for name in paths:
        target = root / name
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            out[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else ""
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------------------------------------
# 1. A bad parameter fails before DVC touches anything
# --------------------------------------------------------------------------------------------------


def make_params_in_copy(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`make params ARGS=...` (python -m lmforge.compose) in a copy of conf/ and params.yaml."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = stage_env()
    result = subprocess.run([sys.executable, "-m", "lmforge.compose", *overrides], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, tmp_path


@pytest.mark.parametrize(("override", "expected"), [
    ("prune.amount=1.5", "invalid value for 'prune.amount': 1.5 (expected a value > 0.0 and < 1.0)"),
    ("model.n_head=3", "invalid value for 'model.n_head': 3 (expected a divisor of model.n_embd=128)"),
    ("student.n_layer=99", "'student.n_layer': 99 (the student must not be larger than its teacher, which has "
                           "4 layers"),
    ("prune.amout=0.5", "unknown key 'prune.amout' (nearest valid: prune.amount)"),
    ("profile=tinny", "unknown option 'profile=tinny' (nearest valid: tiny)"),
    ("launcher='python && touch pwned'", "invalid value for 'launcher': 'python && touch pwned'"),
])
def test_make_params_refuses_a_bad_value_in_one_line_and_writes_nothing(tmp_path, override, expected):
    result, copy = make_params_in_copy(tmp_path, override)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in lines[0]
    assert (copy / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    assert (copy / "conf/make_params.yaml").read_bytes() == (ROOT / "conf/make_params.yaml").read_bytes()


@pytest.mark.slow
def test_a_bad_parameter_under_dvc_fails_at_validate_and_changes_nothing(tiny_run, tiny_run_copy):
    repo, env, _ = tiny_run_copy  # the whole chain ran and was committed
    assert stages_run(tiny_run.output)[0] == "validate"
    kept = ["data/processed", "metrics/preprocess.json", "models/base", "dvc.lock"]
    before = snapshot(repo, *kept)
    for override, expected in [("preprocess.block_size=0", "invalid value for 'preprocess.block_size': 0"),
                               ("model.n_head=3", "expected a divisor of model.n_embd=32")]:
        result = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, env=env, capture_output=True,
                                text=True)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert stages_run(output) == ["validate"], output
        assert expected in output
        assert snapshot(repo, *kept) == before, f"{override} changed an output"
    # the good parameters back: validation passes, and its output is unchanged, so nothing else reruns
    subprocess.run(["git", "checkout", "params.yaml"], cwd=repo, env=env, check=True)
    again = subprocess.run(["dvc", "repro", "preprocess"], cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(stages_run(again.stdout)) <= {"validate"}  # DVC may restore its output from the cache instead
    assert (repo / "models/.params-valid").is_file()
    assert snapshot(repo, *kept) == before


# --------------------------------------------------------------------------------------------------
# Helpers for the stage-level tests: stages run as DVC runs them, in a working folder of their own
# --------------------------------------------------------------------------------------------------


def tiny_model_folder(folder: Path, *, safetensors: bool = True) -> Path:
    """A GPT-2 of profile=tiny's shape saved as a model folder of the chain (or, as a pickle, as older
    transformers wrote it: pytorch_model.bin)."""
    import torch

    model = tiny_gpt2(vocab_size=400, n_positions=64)
    model.save_pretrained(folder)
    if not safetensors:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def poison(folder: Path, tensor: str = "transformer.h.1.mlp.c_fc.weight") -> None:
    """One NaN in one tensor of the folder's model.safetensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors[tensor].view(-1)[3] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def curve_files(root: Path) -> list[Path]:
    return sorted((root / "plots" / "metrics").rglob("*.tsv"))


def steps_of(tsv: Path) -> list[int]:
    rows = tsv.read_text().splitlines()
    column = rows[0].split("\t").index("step")
    return [int(row.split("\t")[column]) for row in rows[1:]]


def read_json(path: Path):
    import json

    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory) -> Path:
    """profile=tiny preprocessed and pretrained (what those stages wrote in the session's tiny run), in a folder
    of its own."""
    work = tmp_path_factory.mktemp("trained")
    for name in ("params.yaml", "data/processed", "models/general", "checkpoints/pretrain", "dvclive/pretrain",
                 "metrics/pretrain.json"):
        source = tiny_run.path / name
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)
    return work


# --------------------------------------------------------------------------------------------------
# 2. Rerunning a finished training stage trains nothing and reproduces the model and the metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rerunning_a_complete_training_run_trains_nothing_and_reproduces_it(trained):
    model = trained / "models/general/model.safetensors"
    weights, first = model.read_bytes(), read_json(trained / "metrics/pretrain.json")
    curves = snapshot(trained, "dvclive/pretrain/plots")
    assert first["steps"] == 6 and first["resumed_from_step"] == 0

    result = run_stage(trained, "pretrain")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to train" in result.stderr
    second = read_json(trained / "metrics/pretrain.json")
    assert second["steps"] == 6 and second["resumed_from_step"] == 6
    assert model.read_bytes() == weights, "the model changed on a rerun of a complete run"
    assert sorted(p.name for p in (trained / "checkpoints/pretrain").glob("checkpoint-*")) == ["checkpoint-6"]
    # metrics of the whole run: the same losses, and a throughput that does not count 6 steps in no time
    for key in ("train_loss", "train_runtime_s", "train_tokens_per_s", "eval_general_loss",
                "eval_general_perplexity", "parameters"):
        assert second[key] == first[key], key
    # the curves: unchanged, and every step at most once in each
    assert snapshot(trained, "dvclive/pretrain/plots") == curves
    for tsv in curve_files(trained / "dvclive/pretrain"):
        steps = steps_of(tsv)
        assert steps == sorted(set(steps)), f"{tsv.name}: duplicate steps {steps}"


# --------------------------------------------------------------------------------------------------
# 3. NaN and divergence stop the run; metrics JSON stays strict; a failing stage writes nothing in place
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "folder", "producer"), [
    ("distill", "models/teacher", "finetune"),
    ("quantize", "models/pruned", "prune"),
])
def test_a_nan_weight_in_the_input_model_stops_the_stage_before_any_work(tmp_path, stage, folder, producer):
    compose_into(tmp_path)
    poison(tiny_model_folder(tmp_path / folder))
    last_good = tmp_path / "models/quantized/model_int8.safetensors"  # quantize must leave it in place
    last_good.parent.mkdir(parents=True)
    last_good.write_bytes(b"last good")
    result = run_stage(tmp_path, stage)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    for text in (f"{folder}/model.safetensors", "'transformer.h.1.mlp.c_fc.weight'", "1 NaN",
                 f"dvc repro {producer}"):
        assert text in line
    assert last_good.read_bytes() == b"last good"
    assert not (tmp_path / "models/student").exists()
    assert not (tmp_path / "metrics").exists()


def test_a_non_finite_loss_stops_training_naming_the_stage_and_the_step(tmp_path, monkeypatch):
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from lmforge.config import TrainConfig
    from lmforge.training.runner import TrainingDiverged, fit

    monkeypatch.chdir(tmp_path)
    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")),
                                        pad_token="t0", eos_token="t0")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    ids = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(0)).tolist()
    blocks = Dataset.from_dict({"input_ids": ids})
    # an absurd learning rate: after one AdamW step the weights are ~1e30 and the next logits overflow
    cfg = TrainConfig(max_steps=6, batch_size=4, grad_accum_steps=1, learning_rate=1e30,
                      lr_scheduler="constant_with_warmup", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                      logging_steps=1, eval_steps=6,
                      save_steps=6, eval_max_examples=4, precision="fp32", attn_implementation="sdpa",
                      optim="adamw_torch", torch_compile=False, sampling="random")
    with pytest.raises(TrainingDiverged, match=r"^pretrain: non-finite training loss \(nan\) at step 2") as err:
        fit("pretrain", model, tokenizer, blocks, {"general": blocks.select(range(4))}, cfg, 0, "run",
            tmp_path / "models/general")
    assert "nothing saved to" in str(err.value)
    assert not (tmp_path / "models/general").exists()


def test_a_non_finite_weight_after_a_step_stops_training_naming_the_tensor():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState

    from lmforge.training.runner import RunGuard, TrainingDiverged

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    guard = RunGuard("distill", 0.0, main_process=False)
    state = TrainerState(global_step=7, max_steps=10)
    guard.on_step_end(None, state, TrainerControl(), model=model)  # finite: training goes on
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"^distill: the model being trained, after step 7: tensor "
                                               r"'transformer.h.0.mlp.c_proj.weight' has 0 NaN and 1 infinite"):
        guard.on_step_end(None, state, TrainerControl(), model=model)


def test_a_diverging_loss_is_reported(caplog):
    from transformers import TrainerControl, TrainerState

    from lmforge.training.runner import RunGuard

    guard = RunGuard("pretrain", 0.0, main_process=False)
    for step, loss in [(20, 6.1), (40, 9.0), (60, 41.0), (80, 45.0)]:  # lr=1.0 without clipping, as reported
        guard.on_log(None, TrainerState(global_step=step), TrainerControl(), logs={"loss": loss})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "pretrain: training loss 41.000 at step 60" in warnings[0]
    assert "diverging" in warnings[0]


def test_metrics_json_is_strict_json_with_null_and_a_flag_for_non_finite_values(tmp_path):
    import json

    from lmforge.stage import write_metrics

    path = tmp_path / "metrics.json"
    write_metrics(path, {"eval_loss": float("nan"), "ppl": float("inf"), "ok": 1.5, "nested": {"x": float("-inf")}})

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"eval_loss": None, "ppl": None, "ok": 1.5, "nested": {"x": None},
                    "non_finite": ["eval_loss", "ppl", "nested.x"]}


# --------------------------------------------------------------------------------------------------
# 4. Concurrent and killed runs
# --------------------------------------------------------------------------------------------------


def test_make_params_keeps_its_overrides_for_dvc_exp_run_and_refuses_under_a_running_dvc(tmp_path):
    import yaml
    from dvc.utils.hydra import compose_and_dump

    result, copy = make_params_in_copy(tmp_path, "profile=tiny", "prune.ffn=0.6")
    assert result.returncode == 0, result.stderr
    # what `dvc exp run -S quantize.per_channel=false` composes: conf/ (with make_params.yaml) + its override
    compose_and_dump(str(copy / "exp.yaml"), str(copy / "conf"), None, "config", "", ["quantize.per_channel=false"])
    exp = yaml.safe_load((copy / "exp.yaml").read_text())
    assert exp["model"]["n_layer"] == 2, "the profile make params set was dropped"
    assert exp["prune"]["ffn"] == 0.6 and exp["quantize"]["per_channel"] is False
    assert yaml.safe_load((copy / "params.yaml").read_text())["model"]["n_layer"] == 2

    # a DVC command holds the repository lock: make params refuses, and rewrites nothing
    from dvc.repo import Repo

    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=copy, check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    before = snapshot(copy, "params.yaml", "conf")
    repo = Repo(str(copy))
    with repo.lock:
        env = stage_env()
        refused = subprocess.run([sys.executable, "-m", "lmforge.compose", "prune.ffn=0.7"], cwd=copy, env=env,
                                 capture_output=True, text=True, timeout=120)
    repo.close()
    assert refused.returncode == 2
    assert "holds the repository lock" in error_lines(refused.stderr)[0]
    assert snapshot(copy, "params.yaml", "conf") == before


def test_a_stage_fails_if_params_yaml_is_rewritten_while_it_runs(tmp_path, monkeypatch, capsys):
    from lmforge import stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/pretrain.py"])
    (tmp_path / "params.yaml").write_text("seed: 1\n")

    def main():  # what a `dvc exp run` refused by DVC's lock does meanwhile
        (tmp_path / "params.yaml").write_text("seed: 2\n")

    with pytest.raises(SystemExit) as exit_:
        stage.run(main)
    assert exit_.value.code == 2
    assert "params.yaml was rewritten while the pretrain stage ran" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_instance_of_a_training_stage_is_refused_and_a_stale_lock_taken_over(trained):
    env = stage_env()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom lmforge.locks import lock_stage\n"
                               "held = lock_stage('pretrain'); print('held', flush=True); time.sleep(120)"],
        cwd=trained, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(trained, "checkpoints/pretrain", "dvclive/pretrain")
        result = run_stage(trained, "pretrain")
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = error_lines(result.stderr)
        assert f"checkpoints/pretrain is in use by another pretrain run (pid {holder.pid}" in line
        assert snapshot(trained, "checkpoints/pretrain", "dvclive/pretrain") == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its pid is still in the file, the OS lock is gone
    assert f"pid {holder.pid}" in (trained / "checkpoints/pretrain.lock").read_text()
    result = run_stage(trained, "pretrain")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stale lock" in result.stderr


# --------------------------------------------------------------------------------------------------
# 5. Smaller things
# --------------------------------------------------------------------------------------------------


def test_a_truncated_model_file_names_the_file_and_the_stage_that_makes_it(tmp_path):
    compose_into(tmp_path)
    weights = tiny_model_folder(tmp_path / "models/teacher") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    result = run_stage(tmp_path, "distill")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert "models/teacher/model.safetensors: cannot be read as safetensors" in line
    assert "dvc repro finetune" in line


def test_one_helper_names_the_stage_that_makes_any_input_of_the_chain_again():
    from lmforge import paths
    from lmforge.config import MODEL_NAMES
    from lmforge.errors import missing_input, rerun_hint

    assert {m: paths.producer_of(paths.model_dir(m)) for m in MODEL_NAMES} == {
        "base": "base", "general": "pretrain", "teacher": "finetune", "student": "distill", "pruned": "prune",
        "quantized": "quantize"}
    assert paths.producer_of(paths.TASK / "test") == "preprocess"
    assert paths.producer_of("/elsewhere/repo/models/pruned/model.safetensors") == "prune"  # absolute paths too
    message = "data/processed/task_meta.json: not found (run `dvc repro preprocess`)"
    assert str(missing_input(paths.TASK_META)) == message
    assert rerun_hint("exported/model") == "rerun the stage that writes it"  # not an output of the chain


def test_model_folders_are_read_from_safetensors_only(tmp_path):
    from lmforge.errors import DataError
    from lmforge.modeling.checks import load_hf as load_model

    folder = tiny_model_folder(tmp_path / "models/teacher", safetensors=False)  # pytorch_model.bin: a pickle
    with pytest.raises(DataError, match=r"no \.safetensors weights .*dvc repro finetune"):
        load_model(folder)


@pytest.mark.slow
def test_trained_model_folders_hold_no_pickle(trained):
    pickles = [p.name for p in (trained / "models/general").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert pickles == []


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "is empty"),
    (b"caf\xe9 au lait\n", "is not valid utf-8 text (byte offset 3)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is not a text file"),
])
def test_an_empty_or_binary_raw_file_is_named(tmp_path, content, expected):
    from lmforge.config import CorpusConfig
    from lmforge.data.sources import load_corpus
    from lmforge.errors import DataError

    raw = tmp_path / "general.txt"
    raw.write_bytes(content)
    spec = CorpusConfig(path="text", name=None, files=[str(raw)], label_files=[], splits=["train"], sample_by="line",
                        encoding="utf-8", text_column="text", label_column=None, label_values=[], detokenize="none")
    with pytest.raises(DataError) as err:
        load_corpus(spec, "data.general", hub=False)
    assert f"data.general: {raw} {expected}" in str(err.value)


@pytest.mark.parametrize(("launcher", "ok"), [
    ("python", True),
    ("torchrun --nproc_per_node=2", True),
    ("torchrun --nnodes 1 --nproc_per_node=8", True),
    ("accelerate launch --config_file conf/accelerate/fsdp.yaml", True),
    ("python; rm -rf data", False),
    ("python3", False),
    ("bash -c 'python'", False),
    ("torchrun --nproc_per_node=$(id -u)", False),
    ("accelerate launch --config_file x.yaml > /tmp/out", False),
    ("deepspeed train.py", False),
    ("torchrun evil.py", False),
])
def test_launcher_accepts_only_the_documented_forms(launcher, ok):
    from lmforge.config import check_launcher
    from lmforge.errors import ConfigError

    if ok:
        assert check_launcher(launcher) == launcher
    else:
        with pytest.raises(ConfigError, match="invalid value for 'launcher'"):
            check_launcher(launcher)


def test_the_int8_artifact_is_byte_identical_between_identical_runs(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.compression.dynamic_int8 import WEIGHTS_FILE, quantize_dynamic_int8, save_quantized

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    digests = set()
    for i in range(8):  # safetensors metadata lived in a Rust HashMap: its order changed between maps
        quantized, coverage = quantize_dynamic_int8(model, per_channel=True, include_lm_head=True)
        save_quantized(quantized, tmp_path / str(i), manifest={"method": "dynamic_int8", "coverage": coverage})
        digests.add(hashlib.sha256((tmp_path / str(i) / WEIGHTS_FILE).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_outputs_get_the_modes_of_the_umask(tmp_path):
    script = ("import os, sys\nos.umask(0o002)\nfrom lmforge.artifacts import atomic_dir, write_text\n"
              "write_text(sys.argv[1] + '/file.txt', 'x')\n"
              "with atomic_dir(sys.argv[1] + '/folder') as out:\n    (out / 'inside.txt').write_text('y')\n")
    env = stage_env()
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, check=True)
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o775
