"""Training throughput of the pretrain stage's loop against a minimal hand-written PyTorch loop.

    PYTHONPATH=src python benchmarks/train_throughput.py                       # default profile, ~2-3 min on 2 cores
    PYTHONPATH=src python benchmarks/train_throughput.py --override model=... --steps 20 --rounds 3

Both loops train the same model (built from conf/ by lmforge, same initial weights) on the same random
token blocks of `preprocess.block_size` with the same global batch, AdamW settings (weight decay on the
Trainer's parameter groups), warm-up + cosine schedule and gradient clipping:

  (a) stage:   lmforge's real Trainer path: `runner.training_arguments` + `runner.LMTrainer` + `PadCollator`
               over a `datasets.Dataset`, with evaluation and checkpoint saving switched off (they are not
               the loop) and the stage's own logging_steps; the DVCLive callback is not attached.
  (b) minimal: `logits = model(ids).logits; loss = lm_loss(logits, ids); backward; clip; step; sched; zero_grad`
               over pre-built tensors.

Each round runs (a) and (b) back to back, alternating which goes first; a round times `--steps` optimizer
steps after `--warmup` untimed ones (step ends are timestamped by a TrainerCallback in (a)). The result is
the median over rounds of each loop's tokens/s and of their per-round ratio, with the spread, because the
machine's cores may be shared. Model FLOP utilisation (MFU) is the model's training FLOPs per second over
a measured fp32 matmul ceiling of this machine with the same torch threads; FLOPs per token follow the
nanoGPT / PaLM estimate 6 N + 12 L T n_embd, N the parameters without the position embedding (the token
embedding counts: it is also the LM head). Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback, get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lmforge.compose import compose  # noqa: E402
from lmforge.config import stage_params  # noqa: E402
from lmforge.modeling.build import build_model  # noqa: E402
from lmforge.training.collate import PadCollator  # noqa: E402
from lmforge.training.losses import lm_loss  # noqa: E402
from lmforge.training.runner import LMTrainer, training_arguments  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.95


class StepClock(TrainerCallback):
    """perf_counter() at the end of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def flops_per_token(model: torch.nn.Module, block_size: int) -> tuple[int, int]:
    """(training FLOPs per token, N): nanoGPT's estimate_mfu, 6 N + 12 L T n_embd (PaLM appendix B)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * cfg.n_layer * block_size * cfg.n_embd, n


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The Trainer's AdamW parameter groups: no weight decay on biases and LayerNorm weights."""
    decay = set(LMTrainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def rates(times: list[float], warmup: int, tokens_per_step: int) -> dict[str, float]:
    """Tokens/s over the steps after `warmup`, from step-end timestamps (times[0] = start of step 1):
    `mean` from the whole window's wall time, `median_step` from the median step time (robust to the
    scheduler pre-empting us on a shared machine)."""
    window = times[warmup:]
    durations = [b - a for a, b in zip(window[:-1], window[1:], strict=True)]
    return {"mean": len(durations) * tokens_per_step / (window[-1] - window[0]),
            "median_step": tokens_per_step / statistics.median(durations)}


def stage_loop(prototype, cfg, blocks: torch.Tensor, pad_id: int, seed: int, warmup: int,
               out: Path) -> dict[str, float]:
    """Tokens/s of lmforge's Trainer path over the steps after `warmup`."""
    model = copy.deepcopy(prototype)
    model.set_attn_implementation(cfg.attn_implementation)  # as runner.fit does
    args = training_arguments(cfg, out, seed, precision="fp32")  # as the minimal loop (bf16: precision_speed.py)
    args.set_evaluate("no")
    args.set_save("no")
    args.disable_tqdm = True
    clock = StepClock()
    trainer = LMTrainer(model=model, args=args, data_collator=PadCollator(pad_id),
                        train_dataset=Dataset.from_dict({"input_ids": blocks.tolist()}), callbacks=[clock])
    trainer.train()
    assert len(clock.times) == cfg.max_steps + 1, (len(clock.times), cfg.max_steps)
    return rates(clock.times, warmup, cfg.batch_size * blocks.shape[1])


def minimal_loop(prototype, cfg, blocks: torch.Tensor, warmup: int) -> dict[str, float]:
    """Tokens/s of the plainest correct PyTorch loop with the same optimisation."""
    model = copy.deepcopy(prototype)
    model.set_attn_implementation(cfg.attn_implementation)
    model.train()
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps)
    batches = blocks.split(cfg.batch_size)
    times = [time.perf_counter()]
    for ids in batches[: cfg.max_steps]:
        logits = model(input_ids=ids).logits
        loss = lm_loss(logits, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return rates(times, warmup, cfg.batch_size * blocks.shape[1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per loop and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=5, help="alternating (stage, minimal) pairs")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override of conf/ (repeatable), e.g. model.n_layer=2 or profile=tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ceiling-sizes", default="512,1024,2048", help="n of the n x n fp32 matmuls")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "train_throughput.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        compose(Path(tmp) / "params.yaml", args.override, conf_dir=REPO / "conf")
        params = stage_params("model", "preprocess", "pretrain", path=Path(tmp) / "params.yaml")
        cfg = dataclasses.replace(params.pretrain, max_steps=args.warmup + args.steps)
        block_size, vocab_size, seed = params.preprocess.block_size, params.preprocess.vocab_size, params.seed
        pad_id = 0  # the byte-level BPE's eos/pad token (its only special token) is id 0

        prototype = build_model(params.model, vocab_size=vocab_size, eos_token_id=pad_id, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        blocks = torch.randint(1, vocab_size, (cfg.max_steps * cfg.batch_size, block_size), generator=generator)
        fpt, n_params = flops_per_token(prototype, block_size)
        sizes = tuple(int(s) for s in args.ceiling_sizes.split(","))

        rounds, ceilings = [], []
        for r in range(args.rounds):
            order = ("stage", "minimal") if r % 2 == 0 else ("minimal", "stage")
            result = {"order": "-".join(order)}
            for which in order:
                if which == "stage":
                    rate = stage_loop(prototype, cfg, blocks, pad_id, seed, args.warmup, Path(tmp) / f"out{r}")
                else:
                    rate = minimal_loop(prototype, cfg, blocks, args.warmup)
                result[f"{which}_tokens_per_s"] = rate["mean"]
                result[f"{which}_tokens_per_s_median_step"] = rate["median_step"]
            result["ratio"] = result["stage_tokens_per_s"] / result["minimal_tokens_per_s"]
            result["ratio_median_step"] = (result["stage_tokens_per_s_median_step"]
                                           / result["minimal_tokens_per_s_median_step"])
            ceilings.append(common.matmul_ceiling(sizes))
            result["matmul_gflops"] = ceilings[-1]
            rounds.append(result)
            print(f"round {r + 1}/{args.rounds} ({result['order']}): stage {result['stage_tokens_per_s']:,.0f} "
                  f"tokens/s, minimal {result['minimal_tokens_per_s']:,.0f} tokens/s, ratio {result['ratio']:.3f} "
                  f"(median step {result['ratio_median_step']:.3f}), "
                  f"matmul {max(ceilings[-1].values()):.1f} GFLOP/s", flush=True)

    stage = common.summary([r["stage_tokens_per_s"] for r in rounds])
    minimal = common.summary([r["minimal_tokens_per_s"] for r in rounds])
    ratio = common.summary([r["ratio"] for r in rounds])
    ratio_step = common.summary([r["ratio_median_step"] for r in rounds])
    ceiling = max(max(c.values()) for c in ceilings)
    model_cfg = prototype.config
    payload = {
        "benchmark": "train_throughput",
        "config": {
            "overrides": args.override,
            "model": {"n_layer": model_cfg.n_layer, "n_head": model_cfg.n_head, "n_embd": model_cfg.n_embd,
                      "vocab_size": vocab_size, "dropout": params.model.dropout,
                      "parameters": sum(p.numel() for p in prototype.parameters()),
                      "parameters_without_wpe": n_params},
            "block_size": block_size,
            "batch_size": cfg.batch_size,
            "tokens_per_step": cfg.batch_size * block_size,
            "optimizer": {"optim": cfg.optim, "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay,
                          "lr_scheduler": cfg.lr_scheduler, "warmup_steps": cfg.warmup_steps,
                          "max_grad_norm": cfg.max_grad_norm},
            "precision": "fp32", "attn_implementation": cfg.attn_implementation,
            "torch_compile": cfg.torch_compile,
            "steps_timed": args.steps, "steps_warmup": args.warmup, "rounds": args.rounds,
            "stage_loop": "runner.training_arguments + LMTrainer + PadCollator over a datasets.Dataset; "
                          "eval and save off, logging_steps as configured, no DVCLive",
            "minimal_loop": "forward, lm_loss, backward, clip_grad_norm_, AdamW step, scheduler step, zero_grad",
            "flops_per_token": fpt,
            "flops_formula": "6*N + 12*n_layer*block_size*n_embd (nanoGPT estimate_mfu / PaLM), "
                             "N = parameters without the position embedding",
            "matmul_ceiling": f"best fp32 n x n matmul, n in {list(sizes)}, measured after every round",
        },
        "environment": common.environment(),
        "results": {
            "rounds": rounds,
            "stage_tokens_per_s": stage,
            "minimal_tokens_per_s": minimal,
            "ratio": ratio,
            "ratio_median_step": ratio_step,
            "note": "tokens/s and ratio: whole timed window (mean); *_median_step: from each loop's median step "
                    "time, which is robust to pre-emption by other processes on a shared machine",
            "goal_ratio": GOAL,
            "goal_met": ratio["median"] >= GOAL,
            "matmul_ceiling_gflops": ceiling,
            "stage_gflops": stage["median"] * fpt / 1e9,
            "minimal_gflops": minimal["median"] * fpt / 1e9,
            "mfu_stage": stage["median"] * fpt / (ceiling * 1e9),
            "mfu_minimal": minimal["median"] * fpt / (ceiling * 1e9),
        },
    }
    common.write_json(args.output, payload)
    res = payload["results"]
    print(f"stage {stage['median']:,.0f} tokens/s, minimal {minimal['median']:,.0f} tokens/s, ratio "
          f"{ratio['median']:.3f} (min {ratio['min']:.3f}, max {ratio['max']:.3f}; by median step "
          f"{ratio_step['median']:.3f}; goal >= {GOAL}); MFU stage "
          f"{res['mfu_stage']:.1%} of a {ceiling:.0f} GFLOP/s matmul ceiling; wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
