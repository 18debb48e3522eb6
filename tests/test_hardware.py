"""precision auto: the decision rule on given timings, the probe, forced precisions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lmforge import hardware
from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.training.runner import training_arguments


@pytest.mark.parametrize("fp32_ms,bf16_ms,expected", [
    (10.0, 2.5, "bf16"),    # AMX Xeon: 4x
    (10.0, 8.0, "bf16"),    # 1.25x: enough
    (10.0, 9.5, "fp32"),    # 1.05x: not worth the cast and the accuracy
    (10.0, 10.0, "fp32"),   # a tie goes to fp32
    (10.0, 300.0, "fp32"),  # AVX2-only: bf16 emulated, 30x slower
])
def test_auto_picks_bf16_on_cpu_only_when_the_probe_says_it_is_faster(fp32_ms, bf16_ms, expected):
    precision, reason = hardware.decide("cpu", fp32_ms, bf16_ms)
    assert precision == expected
    assert f"{fp32_ms / bf16_ms:.2f}x" in reason


def test_auto_picks_bf16_on_a_gpu_without_probing():
    assert hardware.decide("cuda") == ("bf16", "GPU")
    with pytest.raises(ValueError, match="timings"):
        hardware.decide("cpu")


def test_probe_measures_both_precisions():
    # wide enough for milliseconds: the times are rounded to 1 us, the speedup is computed before rounding
    timings = hardware.probe("training", width=256, tokens=64, reps=1)
    assert timings["fp32_ms"] > 0 and timings["bf16_ms"] > 0
    assert timings["bf16_speedup"] == pytest.approx(timings["fp32_ms"] / timings["bf16_ms"], rel=0.01, abs=0.001)


def test_choose_auto_records_the_decision_and_the_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "probe", lambda kind, width: {"fp32_ms": 4.0, "bf16_ms": 1.0, "kind": kind})
    decision = hardware.choose_precision("auto", kind="training", width=128)
    assert decision["precision"] == "bf16" and decision["probe"]["fp32_ms"] == 4.0
    monkeypatch.setattr(hardware, "probe", lambda kind, width: {"fp32_ms": 1.0, "bf16_ms": 4.0, "kind": kind})
    assert hardware.choose_precision("auto", kind="inference")["precision"] == "fp32"


def test_forced_bf16_without_native_support_warns_and_still_runs(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="lmforge.hardware"):
        decision = hardware.choose_precision("bf16", kind="training")
    assert decision["precision"] == "bf16" and decision["reason"] == "forced"
    assert "without native bf16" in caplog.text and "slower" in caplog.text
    # and it really runs, giving the fp32 answer to bf16 accuracy
    x, w = torch.randn(8, 16), torch.randn(16, 4)
    with hardware.autocast("bf16"):
        y = x @ w
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), x @ w, atol=0.1, rtol=0.05)


def test_forced_fp16_on_cpu_fails_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'fp16' needs a GPU"):
        hardware.choose_precision("fp16", kind="training")


def test_training_arguments_take_the_resolved_precision(tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=2, grad_accum_steps=1, learning_rate=1e-3, lr_scheduler="cosine",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, eval_steps=1,
                      save_steps=1, eval_max_examples=4, precision="auto", attn_implementation="sdpa",
                      optim="adamw_torch", torch_compile=False, sampling="random")
    with pytest.raises(ValueError, match="resolved precision"):
        training_arguments(cfg, tmp_path, seed=0)
    assert training_arguments(cfg, tmp_path, seed=0, precision="bf16").bf16
    assert not training_arguments(cfg, tmp_path, seed=0, precision="fp32").bf16


def test_the_cpu_is_described_by_its_model_and_simd_flags():
    assert hardware.cpu_model()
    flags = hardware.cpu_flags()
    assert flags == sorted(flags) and all(f.startswith(("avx", "amx", "fma")) for f in flags)
    if Path("/proc/cpuinfo").is_file() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in flags


def test_group_by_length_batches_pad_less_than_random_ones(tmp_path):
    """train.sampling reaches the Trainer's sampler: over one epoch of texts of 4..60 tokens, batches of
    similar length carry a small fraction of the padding of shuffled ones (profile=mpnet_to_minilm's distill:
    27 instead of 52 tokens an example), and every example is still seen once."""
    from datasets import Dataset
    from helpers import tiny_gpt2
    from transformers import Trainer

    from lmforge.training.collate import PadCollator

    lengths = torch.randint(4, 61, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": [[i % 50 + 1] * n for i, n in enumerate(lengths)]})
    padding = {}
    for sampling in ("random", "group_by_length"):
        cfg = TrainConfig(max_steps=32, batch_size=8, grad_accum_steps=1, learning_rate=1e-3, lr_scheduler="cosine",
                          warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, eval_steps=1,
                          save_steps=1, eval_max_examples=4, precision="fp32", attn_implementation="sdpa",
                          optim="adamw_torch_fused", torch_compile=False, sampling=sampling)
        trainer = Trainer(model=tiny_gpt2(0), args=training_arguments(cfg, tmp_path / sampling, seed=0,
                                                                      precision="fp32"),
                          train_dataset=data, eval_dataset=data, data_collator=PadCollator(pad_token_id=0))
        batches = list(trainer.get_train_dataloader())
        assert sorted(int(n) for b in batches for n in b["attention_mask"].sum(-1)) == sorted(lengths)
        padding[sampling] = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    assert padding["random"] > 0.3 * sum(lengths)  # shuffled batches of 4..60 tokens: padding is a large share
    assert padding["group_by_length"] < 0.2 * padding["random"]
