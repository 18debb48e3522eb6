"""What each prune method buys in speed and size: every variant against the dense fp32 model of the same shape.

    PYTHONPATH=src .venv/bin/python benchmarks/compression_speed.py --threads 2     # ~3-5 minutes

Shapes (random weights: speed and size depend on shapes, not values): the default model (GPT-2 4 x 128,
vocab 1024) and GPT-2 124M (12 x 768, vocab 50257). Variants: dense; l1 50%; wanda 50%; wanda 2:4;
structured 25% and 50% of the non-embedding parameters; lowrank at rank ratios 0.5 and 0.25; and the
chain's pruned model (models/pruned, when it exists). Latency is one forward pass with full logits at
batch 1 and batch 16, in alternating rounds (the order rotates each round), medians over rounds;
ratios are dense / variant in the same round. Size is the bytes of the weights as saved; for unstructured
sparsity also what a bitmask + non-zero values format would take (nothing here stores it that way).

Structured targets on GPT-2 (whose config cannot drop heads): 25% = 37.5% of FFN channels; 50% = a
quarter of the blocks plus half the FFN channels (a block is 4E^2 attention + 8E^2 FFN weights).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, environment, summary, write_json
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.compression import lowrank, structured, wanda
from lmforge.compression.calibration import calibrate
from lmforge.compression.linear import linear_layers
from lmforge.compression.prune import l1_unstructured, make_permanent
from lmforge.evaluation.metrics import count_parameters, time_ms
from lmforge.modeling.io import load_model

SHAPES = {
    "default_4x128": GPT2Config(vocab_size=1024, n_positions=128, n_embd=128, n_layer=4, n_head=4),
    "gpt2_124m": GPT2Config(),
}
STRUCTURED = {"structured_25": {"ffn": 0.375, "layers": 0.0}, "structured_50": {"ffn": 0.5, "layers": 0.25}}
GOALS = {"structured_50_speedup_batch1_gpt2_124m": 1.4, "structured_50_bytes_ratio_gpt2_124m": 0.6}


def variants(dense: nn.Module, calib_tokens: torch.Tensor, pruned_dir: Path | None) -> dict[str, nn.Module]:
    calib = calibrate(dense, calib_tokens, 8)
    out: dict[str, nn.Module] = {"dense": dense}
    model = copy.deepcopy(dense)
    l1_unstructured(model, 0.5)
    out["l1_50"] = model
    for name, amount, n_m in (("wanda_50", 0.5, None), ("wanda_2of4", None, (2, 4))):
        model = copy.deepcopy(dense)
        wanda.wanda(model, calib, amount, n_m)
        out[name] = model
    for model in out.values():
        make_permanent(model)
    for name, cfg in STRUCTURED.items():
        out[name] = structured.structured(dense, calib, None, cfg["ffn"], cfg["layers"])[0].eval()
    for ratio in (0.5, 0.25):
        model = copy.deepcopy(dense)
        lowrank.lowrank(model, calib, ratio, None, activation_aware=True)
        out[f"lowrank_{ratio}"] = model
    if pruned_dir is not None:
        out["chain_pruned"] = load_model(pruned_dir)  # any format: low-rank factors too
    return out


def saved_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a save writes (each storage once); the files add a few kB of header."""
    return sum(t.numel() * t.element_size() for t in lowrank.unique_state(model).values())


def bitmask_bytes(model: nn.Module, dense_bytes: int) -> int | None:
    """Saved size if block weights with zeros were stored as non-zero fp32 values + a 1-bit mask."""
    layers = linear_layers(model, blocks_only=True).values()
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    numel = sum(m.weight.numel() for m in layers)
    if zeros < 0.1 * numel:  # not a sparse model (a random init has a few exact zeros too)
        return None
    return dense_bytes - 4 * zeros + numel // 8


@torch.inference_mode()
def time_forward(model: nn.Module, ids: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward pass over `ids` (full logits)."""
    return statistics.median(time_ms(lambda: model(input_ids=ids), reps, warmup=0)) / 1000


def measure_shape(name: str, config: GPT2Config, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    dense = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    calib_tokens = torch.randint(0, config.vocab_size, (16, args.seq_len), generator=generator)
    pruned_dir = Path(args.pruned) if name == "default_4x128" and args.pruned and Path(args.pruned).is_dir() else None
    models = variants(dense, calib_tokens, pruned_dir)
    batches = {b: torch.randint(0, config.vocab_size, (b, args.seq_len), generator=generator) for b in (1, 16)}
    names = list(models)
    seconds: dict[str, dict[int, list[float]]] = {n: {1: [], 16: []} for n in names}
    ratios: dict[str, dict[int, list[float]]] = {n: {1: [], 16: []} for n in names}
    for model in models.values():  # warm-up
        time_forward(model, batches[1], 1)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for batch, ids in batches.items():
            reps = args.reps if batch == 1 else max(1, args.reps // 3)
            this_round = {n: time_forward(models[n], ids, reps) for n in order}
            for n in names:
                seconds[n][batch].append(this_round[n])
                ratios[n][batch].append(this_round["dense"] / this_round[n])
    dense_bytes = saved_bytes(dense)
    rows = {}
    for n, model in models.items():
        counts = count_parameters(model)
        size = saved_bytes(model)
        rows[n] = {
            "parameters": counts["parameters"], "nonzero_parameters": counts["nonzero_parameters"],
            "non_embedding_parameters": counts["non_embedding_parameters"],
            "bytes": size, "bytes_ratio": round(size / dense_bytes, 4),
            "bitmask_bytes_ratio": (round(b / dense_bytes, 4) if (b := bitmask_bytes(model, size)) else None),
            "ms_batch1": round(1e3 * statistics.median(seconds[n][1]), 3),
            "ms_batch16": round(1e3 * statistics.median(seconds[n][16]), 3),
            "speedup_batch1": {k: round(v, 3) for k, v in summary(ratios[n][1]).items()},
            "speedup_batch16": {k: round(v, 3) for k, v in summary(ratios[n][16]).items()},
        }
    return {"config": {"n_layer": config.n_layer, "n_embd": config.n_embd, "vocab_size": config.vocab_size,
                       "seq_len": args.seq_len}, "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="forward passes per measurement at batch 1 (16: a third)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--pruned", default="models/pruned", help="the chain's pruned model, if it exists")
    parser.add_argument("--output", type=Path, default=RESULTS / "compression_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    payload = {"config": {"threads": args.threads, "rounds": args.rounds, "reps": args.reps,
                          "seq_len": args.seq_len, "structured": STRUCTURED}, "environment": environment()}
    for name in args.shapes.split(","):
        results[name] = measure_shape(name, SHAPES[name], args)
        write_json(args.output, {**payload, "results": results, "partial": True})  # a shape at a time
    goals = {}
    if "gpt2_124m" in results:
        row = results["gpt2_124m"]["variants"]["structured_50"]
        goals = {
            "structured_50_speedup_batch1_gpt2_124m": {
                "goal": GOALS["structured_50_speedup_batch1_gpt2_124m"], "value": row["speedup_batch1"]["median"],
                "met": row["speedup_batch1"]["median"] >= GOALS["structured_50_speedup_batch1_gpt2_124m"]},
            "structured_50_bytes_ratio_gpt2_124m": {
                "goal": GOALS["structured_50_bytes_ratio_gpt2_124m"], "value": row["bytes_ratio"],
                "met": row["bytes_ratio"] <= GOALS["structured_50_bytes_ratio_gpt2_124m"]},
        }
    payload.update(results=results, goals=goals, runtime_s=round(time.perf_counter() - start, 1))
    print(write_json(args.output, payload))


if __name__ == "__main__":
    main()
