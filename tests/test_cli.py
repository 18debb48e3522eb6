"""The `lmforge` command and the model folders it reads.

Fast tests check the user errors on hand-made folders and files; the slow ones use the model folders
of a real tiny run (the session fixture `tiny_run`), moved out of the repository.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from helpers import ROOT, stage_env

from lmforge import cli
from lmforge.errors import DataError
from lmforge.modeling import io as modelio

CHAIN = ["general", "teacher", "student", "pruned", "quantized"]


def lmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command as a user runs it (`python -m lmforge` is the `lmforge` entry point)."""
    return subprocess.run([sys.executable, "-m", "lmforge", *args], cwd=cwd, env=stage_env(), capture_output=True,
                          text=True, timeout=300)


def in_process(capsys, monkeypatch, cwd: Path, *argv: str) -> str:
    """stdout of `lmforge ARGV` run in this process (no second start-up of torch), from `cwd`."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    cli.main(list(argv))
    return capsys.readouterr().out


def error_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# --- input files ---------------------------------------------------------------------------------


def test_texts_are_read_from_txt_csv_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one review\n\n  two reviews  \n")
    (tmp_path / "a.csv").write_text('review,stars\n"good, really",5\nbad,1\n')
    (tmp_path / "a.tsv").write_text("text\tid\nfine\t1\n")
    (tmp_path / "a.jsonl").write_text('{"text": "fine", "id": 1}\n\n{"text": "meh"}\n')
    assert cli.read_texts(tmp_path / "a.txt", "text") == ["one review", "two reviews"]
    assert cli.read_texts(tmp_path / "a.csv", "review") == ["good, really", "bad"]
    assert cli.read_texts(tmp_path / "a.tsv", "text") == ["fine"]
    assert cli.read_texts(tmp_path / "a.jsonl", "text") == ["fine", "meh"]


@pytest.mark.parametrize("name, content, column, message", [
    ("missing.csv", None, "text", r"missing.csv: file not found"),
    ("empty.jsonl", "\n\n", "text", r"empty.jsonl: no texts in it \(empty file\)"),
    ("header_only.csv", "text\n", "text", r"header_only.csv: no texts in it"),
    ("reviews.csv", "review,stars\ngood,5\n", "text",
     r"reviews.csv: no column 'text' \(columns found: review, stars\); choose one with --text-column"),
    ("reviews.jsonl", '{"body": "x", "stars": 1}\n', "text", r"no column 'text' \(columns found: body, stars\)"),
    ("broken.jsonl", '{"text": "x"}\n{oops\n', "text", r"broken.jsonl:2: not a JSON object"),
    ("holes.jsonl", '{"text": "x"}\n{"text": null}\n', "text", r"record 2 has no text in column 'text'"),
    ("reviews.parquet", "x", "text", r"unknown file type .parquet \(expected .jsonl, .csv, .tsv, .txt\)"),
])
def test_bad_input_files_are_one_clear_error(tmp_path, name, content, column, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        cli.read_texts(tmp_path / name, column)


def test_a_file_error_exits_2_with_one_line_before_loading_any_model(tmp_path, capsys):
    (tmp_path / "reviews.csv").write_text("review\ngood\n")
    err = error_line(capsys, "predict", str(tmp_path / "no-model"), "--file", str(tmp_path / "reviews.csv"))
    assert "columns found: review" in err


def test_predict_needs_texts_or_a_file_not_both(tmp_path, capsys):
    assert "nothing to classify" in error_line(capsys, "predict", str(tmp_path))
    (tmp_path / "a.txt").write_text("x\n")
    assert "not both" in error_line(capsys, "predict", str(tmp_path), "x", "--file", str(tmp_path / "a.txt"))


# --- model folders ---------------------------------------------------------------------------------


def test_folders_that_are_not_complete_models_are_named_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    (models / "base").mkdir(parents=True)
    (models / "base" / "base.json").write_text('{"init": "scratch"}')
    (models / ".pruned.tmp-trained").mkdir()
    (models / "student").mkdir()
    (models / "student" / "config.json").write_text("{}")  # a save interrupted before the weights
    (models / "quantized").mkdir()
    (models / "quantized" / "quantization.json").write_text("{}")
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    (tmp_path / "file.txt").write_text("x")

    expected = {
        "models/pruned": r"models/pruned: not found \(run `dvc repro prune`\)",
        "models/.pruned.tmp-trained": r"temporary folder left by an interrupted stage.*models/pruned",
        "models/student": r"has config.json but no weights .*unfinished stage; run `dvc repro distill`",
        "models/quantized": r"has quantization.json but no weights \(model_int8.safetensors or model.onnx or "
                            r"model.safetensors\)",
        "models/base": r"only the base manifest \(model.init=scratch\)",
        "checkpoint-3": r"a training checkpoint",
        "notes": r"not a model folder of lmforge: none of config.json \(hf\), quantization.json \(quantized\), "
                 r"lowrank.json \(lowrank\).*found: a.txt",
        "file.txt": r"not a folder",
    }
    for folder, message in expected.items():
        with pytest.raises(modelio.ModelFolderError, match=message):
            modelio.detect_format(folder)
    assert "run `dvc repro prune`" in error_line(capsys, "info", "models/pruned")


def test_a_registered_format_is_detected_before_the_generic_config_json(tmp_path, monkeypatch):
    monkeypatch.setattr(modelio, "FORMATS", dict(modelio.FORMATS))
    modelio.register_format("onnx", "onnx.json", ("model.onnx",), lambda folder: "an onnx model")
    for name in ("config.json", "onnx.json", "model.onnx"):
        (tmp_path / name).write_text("{}")
    assert modelio.detect_format(tmp_path).name == "onnx"
    (tmp_path / "onnx.json").unlink()
    with pytest.raises(modelio.ModelFolderError, match="config.json but no weights"):
        modelio.detect_format(tmp_path)


# --- on the model folders of a real tiny run -------------------------------------------------------


@pytest.fixture(scope="module")
def moved_quantized(tiny_run, tmp_path_factory) -> Path:
    """models/quantized copied out of its repository: no data/processed, no params.yaml next to it."""
    repo = tiny_run.path
    dest = tmp_path_factory.mktemp("elsewhere") / "my-model"
    shutil.copytree(repo / "models/quantized", dest)
    return dest


@pytest.mark.slow
def test_every_model_folder_carries_its_task_and_a_model_card(tiny_run):
    repo = tiny_run.path
    task = json.loads((repo / "data/processed/task_meta.json").read_text())
    produced = {"general": "pretrain", "teacher": "finetune", "student": "distill", "pruned": "prune",
                "quantized": "quantize"}
    for name, stage in produced.items():
        folder = repo / "models" / name
        assert json.loads((folder / "task_meta.json").read_text()) == {
            **task, "max_prompt_tokens": task["block_size"] - 1, "truncation_side": "left"}
        assert (folder / "tokenizer.json").is_file()
        assert not (folder / "training_args.bin").exists(), "a pickle in a model folder"
        text = (folder / "README.md").read_text()
        front = yaml.safe_load(text.split("---\n")[1])
        assert front["lmforge"]["stage"] == stage and "git_revision" not in front["lmforge"]  # deterministic folders
        assert front["datasets"] and front["tags"][:2] == ["lmforge", stage]
        assert front["library_name"] == ("lmforge" if name == "quantized" else "transformers")
    card = yaml.safe_load((repo / "models/pruned/README.md").read_text().split("---\n")[1])
    assert card["lmforge"]["params"]["prune"]["ffn"] == 0.5  # the stage's params, from params.yaml (profile=tiny)
    assert any(m["type"] == "perplexity" for m in card["model-index"][0]["results"][0]["metrics"])


@pytest.mark.slow
def test_predict_on_a_moved_model_scores_exactly_as_evaluate(tiny_run, moved_quantized, tmp_path, capsys,
                                                             monkeypatch):
    repo = tiny_run.path
    test = load_from_disk(str(repo / "data/processed/task"))["test"]
    n = json.loads((repo / "metrics/evaluate.json").read_text())["data"]["task_examples"]
    texts, labels = test["text"][:n], test["label"][:n]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps({"review": t, "stars": y}) + "\n"
                                                    for t, y in zip(texts, labels, strict=True)))
    out = tmp_path / "predictions.jsonl"
    in_process(capsys, monkeypatch, tmp_path, "predict", str(moved_quantized), "--file", "reviews.jsonl",
               "--text-column", "review", "--output", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    assert all(0.5 <= r["probability"] <= 1.0 for r in rows)
    # the same prompt, label words and scorer as evaluate: the same accuracy on the same test reviews
    accuracy = sum(r["label"] == ["negative", "positive"][y] for r, y in zip(rows, labels, strict=True)) / n
    evaluated = json.loads((repo / "metrics/evaluate.json").read_text())["models"]["quantized"]["accuracy"]
    assert accuracy == pytest.approx(evaluated, abs=1e-4)

    # the installed command, once, as a user runs it
    result = lmforge("predict", str(moved_quantized), "a great film", "not good at all", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("\tnot good at all")
    assert lines[0].split("\t")[0] in ("negative", "positive")
    assert result.stderr == ""  # no warnings or progress bars for a user to wade through


@pytest.mark.slow
def test_generate_is_reproducible_from_its_seed(moved_quantized, tmp_path, capsys, monkeypatch):
    runs = [in_process(capsys, monkeypatch, tmp_path, "generate", str(moved_quantized), "The movie",
                       "--max-new-tokens", "8", "--seed", "1") for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith("The movie")
    greedy = in_process(capsys, monkeypatch, tmp_path, "generate", str(moved_quantized), "The movie",
                        "--max-new-tokens", "8", "--temperature", "0")
    assert greedy.startswith("The movie")


@pytest.mark.slow
def test_info_reports_format_sparsity_and_the_evaluate_metrics(tiny_run, moved_quantized, capsys, monkeypatch):
    repo = tiny_run.path
    out = in_process(capsys, monkeypatch, repo, "info", "models/pruned")
    fields = dict((part.strip() for part in line.split("  ", 1)) for line in out.splitlines())
    assert fields["format"] == "hf" and fields["stage"] == "prune"
    models = json.loads((repo / "metrics/evaluate.json").read_text())["models"]
    evaluated = models["pruned"]
    # structured pruning (the default): half the FFN channels sliced away, so fewer parameters, no zeros
    assert fields["parameters"] == f"{evaluated['parameters']:,}"
    assert evaluated["parameters"] < models["student"]["parameters"]
    assert fields["sparsity"] == "0.0%"
    assert fields["evaluate: accuracy"] == f"{evaluated['accuracy']:.3f}"
    assert fields["evaluate: validation_accuracy"] == f"{evaluated['validation_accuracy']:.3f}"
    assert fields["non-zero parameters"] == f"{evaluated['nonzero_parameters']:,}"

    moved = in_process(capsys, monkeypatch, moved_quantized.parent, "info", str(moved_quantized))
    assert "int8" in moved and "evaluate:" not in moved


# --- the bundle a stage writes into a model folder --------------------------------------------------


def test_write_bundle_adds_the_task_and_a_card_and_drops_the_trainer_pickle(tmp_path, monkeypatch):
    from lmforge import paths
    from lmforge.modeling import card as modelcard

    monkeypatch.chdir(tmp_path)
    paths.PROCESSED.mkdir(parents=True)
    paths.TASK_META.write_text(json.dumps({"prompt": " Sentiment:", "label_words": [" negative", " positive"],
                                           "label_token_ids": [7, 9], "block_size": 16}))
    shutil.copy(ROOT / "dvc.yaml", "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    folder = tmp_path / "models" / ".pruned.tmp-trained"  # where the stage writes before the rename
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "training_args.bin").write_bytes(b"pickle")
    modelcard.write_bundle(folder, "prune", metrics={"recovery": {"eval_domain_perplexity": 5.1, "steps": 3}})

    assert not (folder / "training_args.bin").exists()
    task = json.loads((folder / "task_meta.json").read_text())
    assert task["max_prompt_tokens"] == 15 and task["label_token_ids"] == [7, 9]
    card = modelcard.read_card(folder)
    assert card["library_name"] == "transformers" and card["datasets"][0].startswith("lmforge-synthetic")
    assert set(card["lmforge"]["params"]) == {"seed", "prune"}  # the sections dvc.yaml lists for prune
    assert card["lmforge"]["metrics"] == {"recovery.eval_domain_perplexity": 5.1, "recovery.steps": 3}
    assert card["model-index"][0]["name"] == "prune"
    assert card["model-index"][0]["results"][0]["metrics"][0]["value"] == 5.1
    assert "lmforge predict ." in (folder / "README.md").read_text()
