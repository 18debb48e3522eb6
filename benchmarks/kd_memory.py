"""Peak memory and step time of the distillation loss: plain (full-vocabulary tensors) vs chunked.

    PYTHONPATH=src python benchmarks/kd_memory.py                 # SmolLM2-135M shapes, ~3-5 min on 2 cores
    PYTHONPATH=src python benchmarks/kd_memory.py --tiny          # seconds: the test's setting

The teacher has SmolLM2-135M's shape (30 layers, 576 wide, 9 heads / 3 kv heads, vocabulary 49,152, tied
embeddings) and the student the same width with 10 layers; random weights (memory and time do not depend on
them). One distillation step is: student forward, teacher forward without gradients, KD (T=2) + CE, backward.

  plain:   teacher logits from its full forward; `kd_loss` + `lm_loss` (lmforge.training.losses)
  chunked: `distillation_loss`: teacher logits from its last hidden state a chunk of positions at a time,
           each chunk's terms and their closed-form gradient computed together (what DistillationTrainer runs)

Each variant runs in its own process (peak RSS is per process: ru_maxrss), alternating the order over rounds;
peak memory is reported as the peak RSS during the steps minus the RSS before the first step (weights,
optimizer-free). Writes benchmarks/results/kd_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
           "vocab_size": 49152, "max_position_embeddings": 2048, "tie_word_embeddings": True}
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 4096, "max_position_embeddings": 64, "tie_word_embeddings": True}


def rss_mb() -> float:
    """Current resident set size of this process (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker(variant: str, shape: dict, teacher_layers: int, student_layers: int, batch: int, seq: int,
           steps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.training.losses import distillation_loss, kd_loss, lm_loss

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(num_hidden_layers=teacher_layers, bos_token_id=0, eos_token_id=0,
                                           **shape)).eval().requires_grad_(False)
    student = LlamaForCausalLM(LlamaConfig(num_hidden_layers=student_layers, bos_token_id=0, eos_token_id=0,
                                           **shape)).train()
    ids = torch.randint(0, shape["vocab_size"], (batch, seq))
    mask = torch.ones_like(ids)
    before = rss_mb()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = student(input_ids=ids, attention_mask=mask).logits
        if variant == "plain":
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
            kd, ce = kd_loss(logits, teacher_logits, mask, 2.0), lm_loss(logits, ids)
            loss = 0.5 * kd + 0.5 * ce
        else:
            with torch.no_grad():
                hidden = teacher.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss, kd, ce = distillation_loss(logits, hidden, teacher.get_output_embeddings(), ids, mask, 2.0, 0.5, 0.5)
        loss.backward()
        student.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        del logits, loss, kd, ce
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "step_memory_mb": round(peak - before, 1), "step_s": [round(t, 4) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (the test's setting)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=common.RESULTS / "kd_memory.json")
    parser.add_argument("--worker", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape, layers = (TINY, (2, 1)) if args.tiny else (SMOLLM2, (30, 10))

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, shape, *layers, args.batch, args.seq, args.steps)))
        return

    runs: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for r in range(args.rounds):
        for variant in (["plain", "chunked"] if r % 2 == 0 else ["chunked", "plain"]):
            cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--steps", str(args.steps), "--threads", str(args.threads)] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {variant}: {runs[variant][-1]}", flush=True)

    def stats(variant: str) -> dict:
        memory = [run["step_memory_mb"] for run in runs[variant]]
        steps = [t for run in runs[variant] for t in run["step_s"][1:]] or [runs[variant][0]["step_s"][0]]
        return {"step_memory_mb": common.summary(memory), "step_s": common.summary(steps),
                "peak_rss_mb": common.summary([run["peak_rss_mb"] for run in runs[variant]])}

    result = {"plain": stats("plain"), "chunked": stats("chunked")}
    ratios = {"step_memory_chunked_over_plain": round(result["chunked"]["step_memory_mb"]["median"]
                                                      / result["plain"]["step_memory_mb"]["median"], 3),
              "step_time_chunked_over_plain": round(result["chunked"]["step_s"]["median"]
                                                    / result["plain"]["step_s"]["median"], 3)}
    payload = {
        "benchmark": "kd_memory",
        "config": {"shape": shape, "teacher_layers": layers[0], "student_layers": layers[1], "batch": args.batch,
                   "seq": args.seq, "steps_per_process": args.steps, "rounds": args.rounds,
                   "threads": args.threads, "temperature": 2.0},
        "environment": common.environment(),
        "result": result,
        "ratios": ratios,
        "runs": runs,
    }
    print(json.dumps(ratios))
    print("wrote", common.write_json(args.output, payload))


if __name__ == "__main__":
    main()
