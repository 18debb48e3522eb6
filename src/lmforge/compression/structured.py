"""Structured pruning: remove FFN channels, attention heads and whole blocks, physically.

Importance comes from calibration activations (Minitron-style width scoring, ShortGPT depth scoring):
- an FFN channel j: ||X_j||_2 (its activation at the input of the down projection) x ||W_down[:, j]||_2,
- an attention head: the same over the head's slice of the output projection's input,
- a block: its block influence, 1 - cos(input, output); the least influential blocks go first.
The selected rows / columns are sliced out of the state dict and a model of the smaller config is
built from it, of the same class as the input (causal LM, BertForMaskedLM, or a `*ForSequenceClassification`
classifier: see lmforge.compression.model_class), so the result is a plain Hugging Face model:
`save_pretrained` writes smaller matrices and `lmforge.modeling.family.auto_class(config).from_pretrained`
loads them. Only the blocks change: embeddings, final norms, the LM head, a classifier head (`score`,
`classifier`) and BERT's pooler are kept as they are.

What each family's config can express (the same shapes in every layer, as every config demands):
- GPT-2: `n_inner` (FFN width) and `n_layer`. Not fewer heads: GPT-2 derives head_dim = n_embd / n_head
  and its attention width is n_embd, so heads cannot be removed at a fixed width.
- Llama family: `intermediate_size`, `num_hidden_layers`, and `num_attention_heads` with an explicit
  `head_dim`. With grouped-query attention the same number of query heads is removed from every
  key/value group, so `num_attention_heads / num_key_value_heads` stays an integer.
- BERT (encoders): `intermediate_size` (intermediate.dense -> output.dense) and `num_hidden_layers`. Not
  fewer heads, for GPT-2's reason: BertSelfAttention derives head_dim = hidden_size / num_attention_heads
  (there is no `head_dim` key), and one `num_attention_heads` holds for every layer.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.compression.calibration import Calibration
from lmforge.errors import ConfigError
from lmforge.modeling.arch import blocks_of, most_influential_blocks
from lmforge.modeling.family import new_model


@dataclass(frozen=True)
class Family:
    """Where a family keeps its blocks and projections, and the config keys that describe their sizes."""

    # state-dict prefix of block i, with {i}, in the family's LM and classifier classes; `structured` reads
    # the prefix off the model itself (`blocks_of`), so any class that nests the blocks elsewhere works too
    blocks: str
    ffn_in: tuple[str, ...]  # projections whose outputs are the FFN channels
    ffn_out: str  # the projection that reads them
    layers_key: str
    ffn_key: str
    conv1d: bool  # GPT-2 stores weights (in, out)
    attn_q: str | None = None
    attn_kv: tuple[str, ...] = ()
    attn_out: str | None = None
    head_dim_rule: str = ""  # why the config cannot express fewer heads (families without attn_q)


FAMILIES = {
    "gpt2": Family(blocks="transformer.h.{i}.", ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj", layers_key="n_layer",
                   ffn_key="n_inner", conv1d=True, head_dim_rule="head_dim = n_embd / n_head"),
    "llama": Family(blocks="model.layers.{i}.", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
                    layers_key="num_hidden_layers", ffn_key="intermediate_size", conv1d=False,
                    attn_q="self_attn.q_proj", attn_kv=("self_attn.k_proj", "self_attn.v_proj"),
                    attn_out="self_attn.o_proj"),
}
FAMILIES["mistral"] = FAMILIES["qwen2"] = FAMILIES["llama"]
# BertLayer: attention.self.{query,key,value} -> attention.output.dense, intermediate.dense -> output.dense
FAMILIES["bert"] = Family(blocks="bert.encoder.layer.{i}.", ffn_in=("intermediate.dense",), ffn_out="output.dense",
                          layers_key="num_hidden_layers", ffn_key="intermediate_size", conv1d=False,
                          head_dim_rule="head_dim = hidden_size / num_attention_heads")


def family(model_type: str, heads: float | None) -> Family:
    """The family spec, or ConfigError before any work if the config cannot express the request."""
    if model_type not in FAMILIES:
        raise ConfigError(f"prune.method structured: model type '{model_type}' is not supported "
                          f"(expected one of {', '.join(FAMILIES)})")
    spec = FAMILIES[model_type]
    if heads and spec.attn_q is None:
        raise ConfigError(f"invalid value for 'prune.heads': {heads} ({model_type}'s config cannot express fewer "
                          f"heads at a fixed width: {spec.head_dim_rule}; expected 0 or null, "
                          "prune prune.ffn / prune.layers instead)")
    return spec


def _keep_count(total: int, fraction: float | None) -> int:
    return max(1, total - int(round((fraction or 0.0) * total)))


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return scores.topk(keep).indices.sort().values


def _slice(tensor: torch.Tensor, index: torch.Tensor, features: str, conv1d: bool) -> torch.Tensor:
    """Keep `index` of a weight's output ("out") or input ("in") features; a bias has outputs only."""
    if tensor.dim() == 1:
        return tensor[index]
    out_dim = 1 if conv1d else 0
    dim = out_dim if features == "out" else 1 - out_dim
    return tensor.index_select(dim, index).contiguous()


def _out_columns(weight: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """Per input feature of a projection, the L2 norm of the weights that read it."""
    return weight.norm(dim=1) if conv1d else weight.norm(dim=0)


def _block_prefix(model: nn.Module) -> str:
    """State-dict prefix of block i, with {i}: "transformer.h.{i}.", "model.layers.{i}.", "bert.encoder.layer.{i}."."""
    stack = blocks_of(model)
    return next(name for name, module in model.named_modules() if module is stack) + ".{i}."


@torch.no_grad()
def structured(model: nn.Module, calibration: Calibration, heads: float | None, ffn: float | None,
               layers: float | None) -> tuple[nn.Module, dict[str, Any]]:
    """A new, smaller model with the least important heads, FFN channels and blocks removed; and a report."""
    config = model.config
    spec = family(config.model_type, heads)
    state = model.state_dict()
    blocks = _block_prefix(model)
    n_layers = len(blocks_of(model))
    kept_layers = most_influential_blocks(calibration.block_influence, _keep_count(n_layers, layers))

    new_state = {k: v for k, v in state.items() if not re.match(re.escape(blocks).replace(r"\{i\}", r"\d+"), k)}
    ffn_width = ffn_kept = None
    heads_total = heads_kept = None
    for new_i, old_i in enumerate(kept_layers):
        old, new = blocks.format(i=old_i), blocks.format(i=new_i)
        layer = {k[len(old):]: v for k, v in state.items() if k.startswith(old)}
        # FFN channels
        out_w = layer[f"{spec.ffn_out}.weight"]
        ffn_width = out_w.shape[0 if spec.conv1d else 1]
        name = f"{old}{spec.ffn_out}"
        importance = calibration.input_norm(name).float() * _out_columns(out_w, spec.conv1d)
        keep = _top(importance, _keep_count(ffn_width, ffn))
        ffn_kept = len(keep)
        for proj in spec.ffn_in:
            for part in ("weight", "bias"):
                if f"{proj}.{part}" in layer:
                    layer[f"{proj}.{part}"] = _slice(layer[f"{proj}.{part}"], keep, "out", spec.conv1d)
        layer[f"{spec.ffn_out}.weight"] = _slice(out_w, keep, "in", spec.conv1d)
        # attention heads (Llama family): the same number kept in every key/value group
        if spec.attn_q is not None:
            n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
            group = n_heads // n_kv
            o_w = layer[f"{spec.attn_out}.weight"]
            per_dim = calibration.input_norm(f"{old}{spec.attn_out}").float().pow(2)
            head_act = per_dim.reshape(n_heads, head_dim).sum(1).sqrt()
            head_w = o_w.reshape(o_w.shape[0], n_heads, head_dim).pow(2).sum((0, 2)).sqrt()
            scores = (head_act * head_w).reshape(n_kv, group)
            keep_per_group = _keep_count(group, heads)
            kept_heads = torch.cat([g * group + _top(scores[g], keep_per_group) for g in range(n_kv)])
            dims = (kept_heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)
            for part in ("weight", "bias"):
                if f"{spec.attn_q}.{part}" in layer:
                    layer[f"{spec.attn_q}.{part}"] = _slice(layer[f"{spec.attn_q}.{part}"], dims, "out", False)
            layer[f"{spec.attn_out}.weight"] = _slice(o_w, dims, "in", False)
            heads_total, heads_kept = n_heads, len(kept_heads)
        new_state.update({new + k: v for k, v in layer.items()})

    new_config = copy.deepcopy(config)
    setattr(new_config, spec.layers_key, len(kept_layers))
    setattr(new_config, spec.ffn_key, ffn_kept)
    if heads_kept is not None:
        new_config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        new_config.num_attention_heads = heads_kept
    if isinstance(getattr(new_config, "layer_types", None), list):
        new_config.layer_types = [config.layer_types[i] for i in kept_layers]
    new_config.architectures = [type(model).__name__]  # rebuilt as the same class: classifier, masked or causal
    pruned = new_model(new_config).to(next(model.parameters()).dtype)
    pruned.load_state_dict(new_state, strict=True)
    pruned.train(model.training)

    report = {
        "layers": {"before": n_layers, "after": len(kept_layers), "kept": kept_layers,
                   "block_influence": [round(b, 5) for b in calibration.block_influence]},
        "ffn_channels": {"before": ffn_width, "after": ffn_kept},
        "heads": {"before": heads_total or config.num_attention_heads,
                  "after": heads_kept or config.num_attention_heads},
    }
    return pruned, report
