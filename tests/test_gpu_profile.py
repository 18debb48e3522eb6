"""profile=gpu_gpt2_imdb, dry-run on a CPU: the configs validate, the models build at full size, and
one optimizer step of pretraining and of distillation runs with the profile's switches (bf16 autocast,
fused AdamW, SDPA) on shrunken data. torch.compile is switched off here: compiling GPT-2 on a CPU takes
minutes and proves nothing about the GPU. The hub (GPT-2 weights, WikiText-103, IMDB) is not reached:
the teacher has GPT-2 124M's shape with random weights.
"""

import dataclasses

import pytest
import torch
from datasets import Dataset
from helpers import ROOT

from lmforge.compose import compose
from lmforge.config import SECTIONS, stage_params
from lmforge.modeling.build import build_model, build_student, non_embedding_parameters
from lmforge.training.collate import PadCollator
from lmforge.training.distill import DistillationTrainer
from lmforge.training.runner import LMTrainer, training_arguments

GPT2_VOCAB, GPT2_EOS = 50257, 50256

pytestmark = pytest.mark.slow  # GPT-2 124M built and trained a step in bf16 on the CPU


def shrunk(cfg):
    return dataclasses.replace(cfg, max_steps=1, batch_size=1, warmup_steps=0, torch_compile=False)


def test_gpu_profile_composes_builds_and_takes_a_step_on_cpu(tmp_path):
    compose(tmp_path / "params.yaml", ["profile=gpu_gpt2_imdb"], conf_dir=ROOT / "conf")
    params = stage_params(*SECTIONS, path=tmp_path / "params.yaml")
    assert (params.data.source, params.model.init, params.model.name_or_path) == ("hub", "pretrained", "gpt2")
    assert params.preprocess.tokenizer == "base" and params.preprocess.block_size == 1024
    for stage in ("pretrain", "finetune", "distill"):
        cfg = getattr(params, stage)
        assert (cfg.precision, cfg.optim, cfg.attn_implementation, cfg.torch_compile) == (
            "bf16", "adamw_torch_fused", "sdpa", True)

    teacher = build_model(dataclasses.replace(params.model, init="scratch"), GPT2_VOCAB, GPT2_EOS, seed=0)
    assert sum(p.numel() for p in teacher.parameters()) == 124_439_808  # GPT-2 124M
    student = build_student(teacher, params.model, params.student, seed=0)
    assert (student.config.n_layer, student.config.n_embd) == (6, 512)
    assert non_embedding_parameters(student) <= 0.6 * non_embedding_parameters(teacher)

    ids = torch.randint(0, GPT2_VOCAB, (1, 16)).tolist()  # bf16 matmuls are slow on CPUs: keep it tiny
    data = Dataset.from_dict({"input_ids": ids})
    evals = {"general": data}
    args = training_arguments(shrunk(params.pretrain), tmp_path / "pretrain", seed=0)
    assert args.bf16 and args.optim.value == "adamw_torch_fused"
    before = teacher.transformer.h[0].mlp.c_fc.weight.detach().clone()
    LMTrainer(model=teacher, args=args, data_collator=PadCollator(GPT2_EOS), train_dataset=data,
              eval_dataset=evals).train()
    assert not torch.equal(before, teacher.transformer.h[0].mlp.c_fc.weight)

    cfg = shrunk(params.distill)
    before = student.transformer.h[0].mlp.c_fc.weight.detach().clone()
    trainer = DistillationTrainer(model=student, args=training_arguments(cfg, tmp_path / "distill", seed=0),
                                  data_collator=PadCollator(GPT2_EOS), train_dataset=data, eval_dataset=evals,
                                  teacher=teacher, kd=cfg.kd)
    trainer.train()
    assert not torch.equal(before, student.transformer.h[0].mlp.c_fc.weight)
