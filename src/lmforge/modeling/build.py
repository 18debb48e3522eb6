"""Models of the chain: the teacher architecture from config, and a smaller student derived from it.

A GPT-2 teacher can be distilled into a narrower student; a teacher of another family (Llama and
its relatives, loaded through lmforge.modeling.pretrained) into one with fewer layers of the same
width. A student of the teacher's width starts from a subset of the teacher's layers: the most
influential ones (`student.layer_selection: influence`, chosen by the caller from calibration data)
or evenly spaced ones (`even`).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    set_seed,
)

from lmforge.config import ModelConfig, StudentConfig, student_shape
from lmforge.errors import ConfigError
from lmforge.modeling.family import new_model

log = logging.getLogger(__name__)


def build_model(cfg: ModelConfig, vocab_size: int, eos_token_id: int | None, *, seed: int,
                pad_token_id: int | None = None, objective: str = "clm") -> PreTrainedModel:
    """A freshly initialised model of the configured shape, its vocabulary the tokenizer's: a GPT-2 (objective
    clm), or a BERT with an MLM head (mlm) or MLM and next-sentence heads (mlm_nsp). The initial weights are a
    function of `seed`, so a rerun (or a resumed run) starts from the same model. GPT-2 pads with eos."""
    if cfg.arch not in ("gpt2", "bert"):
        raise ConfigError(f"params.yaml: model.arch={cfg.arch!r} is only supported with model.init=pretrained "
                          "(from scratch lmforge builds a GPT-2 or a BERT)")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"params.yaml: model.n_embd={cfg.n_embd} must be divisible by model.n_head={cfg.n_head}")
    set_seed(seed)
    if cfg.arch == "bert":
        config = BertConfig(
            vocab_size=vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, intermediate_size=4 * cfg.n_embd, max_position_embeddings=cfg.n_positions,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            pad_token_id=pad_token_id, tie_word_embeddings=True,
        )
        return BertForPreTraining(config) if objective == "mlm_nsp" else BertForMaskedLM(config)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
        tie_word_embeddings=True, loss_type="ForCausalLM",
    )
    return GPT2LMHeadModel(config)


def teacher_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher blocks, starting from the first (DistilBERT's "every other layer")."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def build_student(teacher: PreTrainedModel, teacher_cfg: ModelConfig, cfg: StudentConfig, *,
                  seed: int, layer_map: list[int] | None = None) -> PreTrainedModel:
    """The student of `teacher`; whatever is not copied from the teacher is initialised from `seed`.
    `layer_map[s]` is the teacher layer that student layer s starts from (None: evenly spaced)."""
    set_seed(seed)
    n_layer, n_head, n_embd = student_shape(teacher_cfg, cfg)
    if layer_map is None:
        layer_map = teacher_layer_map(teacher_cfg.n_layer, n_layer)
    if len(layer_map) != n_layer or not all(0 <= t < teacher_cfg.n_layer for t in layer_map):
        raise ConfigError(f"student layer map {layer_map}: expected {n_layer} teacher layers in "
                          f"[0, {teacher_cfg.n_layer})")
    if teacher.config.model_type != "gpt2":
        return build_layer_student(teacher, teacher_cfg, cfg, layer_map)
    config = teacher.config.to_dict()
    config.update(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    student = type(teacher)(GPT2Config.from_dict(config))  # GPT2LMHeadModel, or GPT2ForSequenceClassification
    if cfg.init == "teacher" and n_embd == teacher.config.n_embd:
        with torch.no_grad():
            student.transformer.wte.load_state_dict(teacher.transformer.wte.state_dict())
            student.transformer.wpe.load_state_dict(teacher.transformer.wpe.state_dict())
            student.transformer.ln_f.load_state_dict(teacher.transformer.ln_f.state_dict())
            for s, t in enumerate(layer_map):
                student.transformer.h[s].load_state_dict(teacher.transformer.h[t].state_dict())
            if hasattr(teacher, "score"):  # a classifier head reads the same width: it starts as the teacher's
                student.score.load_state_dict(teacher.score.state_dict())
        log.info("student initialised from teacher blocks %s (embeddings and final norm copied)", layer_map)
    elif cfg.init == "teacher":
        log.info("student width %d differs from the teacher's %d: random initialisation", n_embd,
                 teacher.config.n_embd)
    return student


def decoder_layers(model: PreTrainedModel) -> tuple[str, nn.ModuleList]:
    """(qualified name, module) of the stack of decoder layers: "model.layers" in the Llama family."""
    base = model.base_model
    for attr in ("layers", "h", "encoder.layer"):  # Llama family, GPT-2, BERT
        layers = base.get_submodule(attr) if _has_submodule(base, attr) else None
        if isinstance(layers, nn.ModuleList):
            prefix = model.base_model_prefix
            return (f"{prefix}.{attr}" if getattr(model, prefix, None) is base else attr), layers
    raise ConfigError(f"cannot find the decoder layers of a {model.config.model_type!r} model")


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def build_layer_student(teacher: PreTrainedModel, teacher_cfg: ModelConfig, cfg: StudentConfig,
                        layer_map: list[int]) -> PreTrainedModel:
    """A student of the teacher's family, class and width with fewer layers (Llama and relatives, BERT).

    With init=teacher, every tensor outside the layer stack (token embeddings, final norm, LM
    head if untied, a classifier head) is copied and student layer s is teacher layer layer_map[s].
    """
    n_layer, _, _ = student_shape(teacher_cfg, cfg)  # also: the student keeps the teacher's width
    config = copy.deepcopy(teacher.config)
    config.architectures = [type(teacher).__name__]  # the teacher's class, also before save_pretrained names it
    config.num_hidden_layers = n_layer
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) in some families
        config.layer_types = [config.layer_types[t] for t in layer_map]
    student = new_model(config, dtype=torch.float32)
    if cfg.init == "teacher":
        name, _ = decoder_layers(teacher)
        source = teacher.state_dict()
        state = {}
        for key in student.state_dict():
            if key.startswith(f"{name}."):
                index, rest = key[len(name) + 1:].split(".", 1)
                key_in_teacher = f"{name}.{layer_map[int(index)]}.{rest}"
            else:
                key_in_teacher = key
            state[key] = source[key_in_teacher]
        student.load_state_dict(state, strict=True)
        log.info("student initialised from teacher layers %s (embeddings, final norm and head copied)", layer_map)
    return student


def non_embedding_parameters(model: PreTrainedModel) -> int:
    """Parameters outside the token and position embeddings (the tied LM head shares wte)."""
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's positions; rotary models have none
    encoder = getattr(model.base_model, "embeddings", None)  # an encoder's positions (and BERT's token types)
    extra = [getattr(encoder, name, None) for name in ("position_embeddings", "token_type_embeddings")] \
        if encoder is not None else []
    embeddings = {id(p) for m in (model.get_input_embeddings(), wpe, *extra) if m for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
