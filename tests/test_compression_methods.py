"""Wanda, structured and low-rank pruning on GPT-2 (Conv1D) and a Llama-family model: each method's
effect measured on the weights and the logits, saving and reloading, recovery keeping the structure."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from helpers import tiny_gpt2
from torch import nn
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lmforge.cli import describe_ranks
from lmforge.compression import lowrank, methods, structured, wanda
from lmforge.compression.calibration import calibrate
from lmforge.compression.linear import linear_layers
from lmforge.compression.prune import make_permanent, sparsity_report
from lmforge.config import CalibrationConfig, GateConfig, KDConfig, MixtureConfig, PruneConfig, RecoveryConfig
from lmforge.errors import ConfigError
from lmforge.modeling.arch import blocks_of

VOCAB = 300


def gpt2(n_layer: int = 3, seed: int = 0) -> GPT2LMHeadModel:
    return tiny_gpt2(seed, vocab_size=VOCAB, n_layer=n_layer, n_head=4)


def llama(n_layer: int = 3, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config).eval()


FAMILIES = {"gpt2": gpt2, "llama": llama}


def tokens(n: int = 8, seq: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def prune_config(method: list[str], **values) -> PruneConfig:
    keys = dict.fromkeys(("amount", "n_m", "heads", "ffn", "layers", "rank_ratio", "energy", "activation_aware"))
    kd = KDConfig(temperature=2.0, alpha_kd=0.5, alpha_ce=0.5)
    recovery = RecoveryConfig(max_steps=0, batch_size=4, grad_accum_steps=1, learning_rate=1e-3, lr_scheduler="cosine",
                              warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=None,
                              eval_steps=None, save_steps=None, eval_max_examples=8, precision="fp32",
                              attn_implementation="sdpa", optim="adamw_torch", torch_compile=False, sampling="random",
                              data="mixture", kd=kd,
                              mixture=MixtureConfig(domain=1.0, task=1.0, general=1.0))
    return PruneConfig(method=method, **{**keys, **values}, calibration=CalibrationConfig(samples=8, batch_size=4),
                       validation_examples=8, recovery=recovery,
                       gate=GateConfig(max_accuracy_drop=None, max_ppl_ratio=None))


def train_steps(model: nn.Module, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = tokens(4, 16, seed=5)
    for _ in range(steps):
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


# --------------------------------------------------------------------------------------------------
# Wanda
# --------------------------------------------------------------------------------------------------


def test_wanda_keeps_the_highest_weight_times_activation_per_output_row():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    norm = torch.tensor([10.0, 1.0, 1.0, 0.1])  # feature 0 is large: its small weights still matter
    mask = wanda.row_mask(wanda.wanda_scores(weight, norm), 0.5, None)
    assert mask.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    two_four = wanda.row_mask(wanda.wanda_scores(weight, norm), None, (2, 4))
    assert two_four.sum(1).tolist() == [2, 2]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("amount", "n_m"), [(0.5, None), (0.7, None), (None, (2, 4))])
def test_wanda_sparsity_is_exact_per_row_and_per_type(family, amount, n_m):
    model = FAMILIES[family]()
    wanda.wanda(model, calibrate(model, tokens(), 4), amount, n_m)
    expected = amount if amount is not None else 1 - n_m[0] / n_m[1]
    report = sparsity_report(model)
    for layer_type, counts in report["per_type"].items():
        assert counts["sparsity"] == pytest.approx(expected, abs=0.5 / 32), layer_type  # rounding per row of 32
    for name, module in linear_layers(model, blocks_only=True).items():
        w = module.weight.t() if family == "gpt2" else module.weight  # (out, in)
        in_features = w.shape[1]
        if n_m is None:
            assert set((w != 0).sum(1).tolist()) == {in_features - round(amount * in_features)}, name
        else:
            groups = (w != 0).reshape(w.shape[0], -1, n_m[1]).sum(-1)
            assert torch.all(groups == n_m[0]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_masks_survive_recovery_and_reload(family, tmp_path):
    model = FAMILIES[family]()
    wanda.wanda(model, calibrate(model, tokens(), 4), 0.5, None)
    zeros = {n: (m.weight == 0).clone() for n, m in linear_layers(model, blocks_only=True).items()}
    train_steps(model)
    make_permanent(model)
    for name, module in linear_layers(model, blocks_only=True).items():
        assert torch.equal(module.weight == 0, zeros[name]), name
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert sparsity_report(reloaded) == sparsity_report(model)
    assert torch.allclose(logits(model, tokens()), logits(reloaded, tokens()), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Structured
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_width_equals_the_dense_model_with_those_channels_zeroed(family):
    model = FAMILIES[family]()
    calib = calibrate(model, tokens(), 4)
    heads = 0.5 if family == "llama" else None
    pruned, report = structured.structured(model, calib, heads, 0.5, None)
    # the same computation, dense: zero the inputs of the down / output projections that were removed
    reference = copy.deepcopy(model)
    spec = structured.FAMILIES[family]
    for i, (block, small) in enumerate(zip(blocks_of(reference), blocks_of(pruned), strict=True)):
        down = block.get_submodule(spec.ffn_out)
        small_down = small.get_submodule(spec.ffn_out)
        full_w = down.weight.t() if spec.conv1d else down.weight  # (out, in)
        small_w = small_down.weight.t() if spec.conv1d else small_down.weight
        kept = [j for j in range(full_w.shape[1]) if any(torch.equal(full_w[:, j], small_w[:, k])
                                                         for k in range(small_w.shape[1]))]
        assert len(kept) == small_w.shape[1] == (64 if family == "llama" else 128) // 2, i
        with torch.no_grad():
            mask = torch.zeros(full_w.shape[1], dtype=torch.bool)
            mask[kept] = True
            if spec.conv1d:
                down.weight[~mask, :] = 0
            else:
                down.weight[:, ~mask] = 0
            if heads:
                o_proj = block.get_submodule(spec.attn_out)
                small_o = small.get_submodule(spec.attn_out)
                kept_dims = [j for j in range(o_proj.weight.shape[1]) if any(
                    torch.equal(o_proj.weight[:, j], small_o.weight[:, k]) for k in range(small_o.weight.shape[1]))]
                assert len(kept_dims) == 2 * 8  # 2 of 4 heads of 8 dims
                dim_mask = torch.zeros(o_proj.weight.shape[1], dtype=torch.bool)
                dim_mask[kept_dims] = True
                o_proj.weight[:, ~dim_mask] = 0
    assert torch.allclose(logits(pruned, tokens()), logits(reference, tokens()), atol=1e-5)
    assert report["ffn_channels"]["after"] == report["ffn_channels"]["before"] // 2
    if family == "llama":
        assert pruned.config.num_attention_heads == 2 and pruned.config.head_dim == 8
        assert pruned.config.num_key_value_heads == 2  # one query head kept per key/value group
        assert report["heads"] == {"before": 4, "after": 2}


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_depth_drops_the_least_influential_blocks(family):
    model = FAMILIES[family](n_layer=4)
    calib = calibrate(model, tokens(), 4)
    pruned, report = structured.structured(model, calib, None, 0.0, 0.5)
    influence = calib.block_influence
    assert report["layers"]["kept"] == sorted(sorted(range(4), key=lambda i: -influence[i])[:2])
    assert len(blocks_of(pruned)) == 2 and pruned.config.num_hidden_layers == 2
    for new, old in enumerate(report["layers"]["kept"]):
        for (name, a), b in zip(blocks_of(pruned)[new].state_dict().items(),
                                blocks_of(model)[old].state_dict().values(), strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_saves_smaller_matrices_that_reload_and_stay_sliced_through_recovery(family, tmp_path):
    model = FAMILIES[family](n_layer=4)
    heads = 0.5 if family == "llama" else None
    pruned, _ = structured.structured(model, calibrate(model, tokens(), 4), heads, 0.5, 0.25)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    train_steps(pruned)
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == shapes
    assert torch.allclose(logits(pruned, tokens()), logits(reloaded, tokens()), atol=1e-6)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in reloaded.parameters()) < before
    assert len(blocks_of(reloaded)) == 3


def test_gpt2_heads_are_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"'prune.heads': 0.5 \(gpt2's config cannot express fewer heads"):
        methods.check(prune_config(["structured"], heads=0.5, ffn=0.0, layers=0.0), gpt2())


# --------------------------------------------------------------------------------------------------
# Low-rank
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("activation_aware", [False, True])
def test_lowrank_factors_where_it_pays_with_the_claimed_ranks(family, activation_aware):
    model = FAMILIES[family]()
    calib = calibrate(model, tokens(), 4)
    dense = {n: m.weight.shape for n, m in linear_layers(model, blocks_only=True).items()}
    per_type = lowrank.lowrank(model, calib, 0.25, None, activation_aware)
    factored = lowrank.factored_layers(model)
    for name, shape in dense.items():
        out_f, in_f = (shape[1], shape[0]) if family == "gpt2" else shape
        rank = round(0.25 * min(out_f, in_f))
        assert factored[name].rank == rank
        assert factored[name].down.weight.shape == (rank, in_f) and factored[name].up.weight.shape == (out_f, rank)
    assert all(e["dense"] == 0 for e in per_type.values())
    # a rank at the break-even point is left dense, and the report says so
    model = FAMILIES[family]()
    per_type = lowrank.lowrank(model, None, 1.0, None, False)
    assert not lowrank.factored_layers(model) and all(e["factored"] == 0 for e in per_type.values())


def test_lowrank_full_rank_is_exact_and_activation_aware_fits_real_inputs_better():
    weight, x = torch.randn(48, 64), torch.randn(256, 64)
    x[:, :4] *= 30  # a few large input features, as in trained transformers
    layer, _ = lowrank.factor(weight, None, 48 / 64, None, None)
    assert layer is None  # 48 * (48 + 64) > 48 * 64: does not pay
    scale = (x.pow(2).mean(0)).sqrt() ** lowrank.ASVD_ALPHA
    plain, _ = lowrank.factor(weight, None, 0.25, None, None)
    aware, _ = lowrank.factor(weight, None, 0.25, None, scale)
    err = {n: (layer(x) - x @ weight.t()).norm().item() for n, layer in (("plain", plain), ("aware", aware))}
    assert err["aware"] < err["plain"]
    sigma = torch.linalg.svdvals(weight)
    share = (sigma ** 2).cumsum(0) / (sigma ** 2).sum()
    rank = lowrank.choose_rank(sigma, 48, 64, None, 0.5)
    assert share[rank - 1] >= 0.5 > share[rank - 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_lowrank_artifact_reloads_with_the_same_logits_and_stays_factored_through_recovery(family, tmp_path):
    model = FAMILIES[family]()
    lowrank.lowrank(model, calibrate(model, tokens(), 4), 0.25, None, True)
    ranks = {n: m.rank for n, m in lowrank.factored_layers(model).items()}
    train_steps(model)
    assert {n: m.rank for n, m in lowrank.factored_layers(model).items()} == ranks
    lowrank.save_lowrank(model, tmp_path, manifest={"method": ["lowrank"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "lowrank.json", "model_lowrank.safetensors"]
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path)  # not a plain HF folder: fails loudly
    reloaded = lowrank.load_lowrank(tmp_path)
    assert {n: m.rank for n, m in lowrank.factored_layers(reloaded).items()} == ranks
    described = describe_ranks(json.loads((tmp_path / "lowrank.json").read_text()))  # `lmforge info`'s row
    assert described.startswith(f"{len(ranks)}, rank {min(ranks.values())}..{max(ranks.values())} (median ")
    assert torch.allclose(logits(model, tokens()), logits(reloaded, tokens()), atol=1e-6)
    params = sum(p.numel() for p in reloaded.parameters())
    assert params < sum(p.numel() for p in FAMILIES[family]().parameters())


# --------------------------------------------------------------------------------------------------
# Configuration checks and composition
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "values", "message"), [
    (["wanda", "lowrank"], {"amount": 0.5, "rank_ratio": 0.5, "activation_aware": True},
     "wanda and lowrank cannot be combined"),
    (["l1_unstructured", "wanda"], {"amount": 0.5}, "l1_unstructured and wanda cannot be combined"),
    (["lowrank", "structured"], {"ffn": 0.5, "rank_ratio": 0.5, "activation_aware": True},
     "structured must come before lowrank"),
    (["wanda"], {"amount": 0.5, "ffn": 0.5}, "'prune.ffn': 0.5 (expected null: prune.method ['wanda'] does not use it"),
    (["wanda"], {"amount": 0.5, "n_m": [2, 4]}, "'prune.amount': 0.5 (expected null with prune.n_m=[2, 4]"),
    (["wanda"], {"n_m": [2, 5]}, "M dividing every layer's input width"),
    (["lowrank"], {"rank_ratio": 0.5, "energy": 0.9, "activation_aware": True},
     "needs exactly one of prune.rank_ratio and prune.energy"),
    (["structured"], {"ffn": 0.0, "layers": 0.0}, "nothing to remove"),
    (["pruning"], {}, "invalid value for 'prune.method'"),
])
def test_bad_configurations_are_refused_naming_what_is_wrong(method, values, message):
    with pytest.raises(ConfigError) as error:
        methods.check(prune_config(method, **values), gpt2())
    assert message in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_then_lowrank_composes(family):
    model = FAMILIES[family](n_layer=4)
    cfg = prune_config(["structured", "lowrank"], ffn=0.5, layers=0.25, rank_ratio=0.25, activation_aware=True,
                       heads=0.5 if family == "llama" else None)
    methods.check(cfg, model)
    pruned, report = methods.apply(model, cfg, tokens())
    assert set(report) == {"structured", "lowrank"}
    assert len(blocks_of(pruned)) == 3 and lowrank.factored_layers(pruned)
    ffn_in = structured.FAMILIES[family].ffn_in[0]
    factor = lowrank.factored_layers(pruned)[f"{structured.FAMILIES[family].blocks.format(i=0)}{ffn_in}"]
    assert factor.out_features == (32 if family == "llama" else 64)  # factored after slicing: half the FFN
    assert report["lowrank"]["calibration"]["tokens"] == tokens().numel()


def test_l1_and_wanda_run_through_apply():
    model = gpt2()
    pruned, report = methods.apply(model, prune_config(["l1_unstructured"], amount=0.3), tokens())
    assert sparsity_report(pruned)["overall"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    model = gpt2()
    pruned, _ = methods.apply(model, prune_config(["wanda"], n_m=[2, 4]), tokens())
    assert sparsity_report(pruned)["overall"]["sparsity"] == pytest.approx(0.5, abs=0.001)
    assert math.isfinite(float(logits(pruned, tokens()).sum()))


# --------------------------------------------------------------------------------------------------
# prune=none
# --------------------------------------------------------------------------------------------------

def test_no_method_passes_the_model_through_unchanged_and_a_key_it_does_not_use_is_refused():
    """prune=none (`method: []`): the same model, the same logits, no report, no calibration needed; a method key
    set with it is refused as with any method that does not read it."""
    model, x = gpt2(), tokens()
    before = logits(model, x)
    methods.check(prune_config([]), model)
    out, report = methods.apply(model, prune_config([]), None)
    assert out is model and report == {}
    assert torch.equal(logits(out, x), before)
    with pytest.raises(ConfigError, match=r"'prune.ffn': 0.5 \(expected null: prune.method \[\] does not use it"):
        methods.check(prune_config([], ffn=0.5), model)
