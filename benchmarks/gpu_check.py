"""GPU readiness check: GPT-2 124M training tokens/s and MFU, and bf16 / fp32 / int8 inference.

    bash benchmarks/gpu_check.sh                     # on a CUDA machine, < 5 minutes
    python benchmarks/gpu_check.py --dry-run         # CPU, tiny model, 2 steps: checks the code paths only

Training: `GPT2LMHeadModel(GPT2Config())` (124M, random init, nothing downloaded), SDPA attention
(PyTorch's flash / memory-efficient kernels), bf16 autocast, fused AdamW, batch 16 x 1024, timed over a
handful of steps after warm-up, eager and with `torch.compile`. MFU = tokens/s x FLOPs per token over
(a) the measured bf16 matmul ceiling of this GPU and (b) its nominal dense bf16 peak. FLOPs per token:
nanoGPT's estimate 6 N + 12 L T n_embd (N without the position embedding) = 0.855 GFLOP at T = 1024.

What to expect (computed, not measured here): nanoGPT's "135 ms/iter" with compile is bench.py's one
micro-batch of 12 x 1024 tokens on one A100: 91k tokens/s = 78 TFLOP/s = 25% of the A100's 312 TFLOP/s
(its 4-day, 600k-iteration 8xA100 GPT-2 run is 0.576 s per 491,520-token iteration: 107k tokens/s per
GPU, 29% MFU). Read as 135 ms per 0.5M tokens on 8 A100s it would be 455k tokens/s per A100 = 389
TFLOP/s, above the A100's peak, so that reading cannot be right. One H100/H200 SXM (989 TFLOP/s dense
bf16, 3.2x an A100) at the same 25-30% MFU gives 290k-350k tokens/s; at 40-50% MFU (a well-tuned
compiled GPT-2) 460k-580k tokens/s. Writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# Nominal dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def nominal_peak(name: str) -> float | None:
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return peak
    return None


def flops_per_token(model: GPT2LMHeadModel, seq: int) -> int:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * cfg.n_layer * seq * cfg.n_embd


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_rate(config: GPT2Config, device: str, batch: int, seq: int, steps: int, warmup: int,
               precision: str, compile_model: bool) -> dict[str, Any]:
    """Tokens/s of a nanoGPT-style step: bf16 autocast forward + loss, backward, clip, fused AdamW."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device)
    model.set_attn_implementation("sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
    step_model = torch.compile(model) if compile_model else model
    ids = torch.randint(0, config.vocab_size, (warmup + steps, batch, seq), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    start = time.perf_counter()
    for step in range(warmup + steps):
        with autocast:
            logits = step_model(input_ids=ids[step]).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[step, :, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter())
        if step == warmup - 1:
            first = times[-1] - start
    elapsed = times[-1] - times[warmup - 1]
    result = {"tokens_per_s": steps * batch * seq / elapsed, "ms_per_step": 1000 * elapsed / steps,
              "warmup_s": first, "loss": loss.item()}
    if device == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del model, step_model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def linear_from_conv1d(model: GPT2LMHeadModel) -> None:
    """GPT-2's Conv1D blocks as nn.Linear (weight transposed), so int8 libraries that target Linear see them."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1], device=child.weight.device,
                                         dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


def int8_model(model: GPT2LMHeadModel) -> tuple[Any, str]:
    """torchao int8 dynamic-activation / int8-weight on every linear layer, or (None, why not)."""
    if importlib.util.find_spec("torchao") is None:
        return None, "not available: torchao is not installed"
    try:
        from torchao.quantization import quantize_
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig as scheme
        except ImportError:
            from torchao.quantization import int8_dynamic_activation_int8_weight as scheme
        linear_from_conv1d(model)
        quantize_(model, scheme())
        return model, "torchao int8 dynamic activation + int8 weight (all linear layers, Conv1D converted)"
    except Exception as error:  # report, do not fail the whole check
        return None, f"not available: torchao failed: {type(error).__name__}: {error}"


def infer_rate(model, device: str, batch: int, seq: int, runs: int, dtype: torch.dtype | None) -> dict[str, float]:
    """Forward-only tokens/s at (batch, seq) and the median latency of one call."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        model(input_ids=ids)
        sync(device)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(input_ids=ids)
            sync(device)
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return {"batch": batch, "seq": seq, "median_ms": 1000 * median, "tokens_per_s": batch * seq / median}


def int_mm_tops(device: str, n: int) -> dict[str, Any]:
    """The raw int8 tensor-core matmul (torch._int_mm, int8 x int8 -> int32): TOP/s at n x n x n."""
    if device != "cuda" or not hasattr(torch, "_int_mm"):
        return {"status": "not available: torch._int_mm needs CUDA"}
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device).t().contiguous().t()
    try:
        torch._int_mm(a, b)
        sync(device)
    except Exception as error:
        return {"status": f"not available: torch._int_mm failed: {type(error).__name__}: {error}"}
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        torch._int_mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"status": "ok", "n": n, "tops": 2 * n**3 / best / 1e12}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps, no compile")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "gpu_check.json")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.dry_run:
        device, precision = "cpu", "fp32"  # bf16 is 10-100x slower than fp32 on CPUs without bf16 units
        config = GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=64, bos_token_id=511,
                            eos_token_id=511)
        batch, seq, steps, warmup, compile_runs = 2, 32, 2, 1, [False]
        ceiling_dtype, sizes, infer_runs = torch.float32, (128, 256), 3
    else:
        if not torch.cuda.is_available():
            sys.exit(f"gpu_check: no CUDA device (torch {torch.__version__}); use --dry-run on a CPU")
        device, precision = "cuda", "bf16"
        torch.backends.cuda.matmul.allow_tf32 = False  # "fp32" inference below is true fp32
        config = GPT2Config()
        batch, seq, steps, warmup = args.batch, args.seq, args.steps, args.warmup
        compile_runs = [False] if args.no_compile else [False, True]
        ceiling_dtype, sizes, infer_runs = torch.bfloat16, (4096, 8192, 16384), 10
    if args.dry_run:
        config.n_positions = max(config.n_positions, seq)

    env = common.environment()
    name = torch.cuda.get_device_name(0) if device == "cuda" else env["cpu"]
    ceiling = common.matmul_ceiling(sizes, dtype=ceiling_dtype, device=device)
    ceiling_tflops = max(ceiling.values()) / 1000
    peak = nominal_peak(name) if device == "cuda" else None
    fpt = flops_per_token(GPT2LMHeadModel(config), seq)
    print(f"{name}: {ceiling_dtype} matmul ceiling {ceiling_tflops:.3g} TFLOP/s"
          + (f", nominal bf16 peak {peak:.0f} TFLOP/s" if peak else ""), flush=True)

    training = {}
    for compiled in compile_runs:
        key = "compiled" if compiled else "eager"
        r = train_rate(config, device, batch, seq, steps, warmup, precision, compiled)
        r["tflops"] = r["tokens_per_s"] * fpt / 1e12
        r["mfu_vs_measured_ceiling"] = r["tflops"] / ceiling_tflops
        if peak:
            r["mfu_vs_nominal_peak"] = r["tflops"] / peak
        training[key] = r
        print(f"train {key}: {r['tokens_per_s']:,.0f} tokens/s, {r['ms_per_step']:.1f} ms/step, "
              f"{r['tflops']:.3g} TFLOP/s, MFU {r['mfu_vs_measured_ceiling']:.1%} of measured"
              + (f", {r['mfu_vs_nominal_peak']:.1%} of nominal" if peak else "")
              + f" (warm-up incl. compile {r['warmup_s']:.1f} s)", flush=True)

    inference: dict[str, Any] = {}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device).eval()
    model.set_attn_implementation("sdpa")
    shapes = {"latency_b1": (1, min(128, seq)), "throughput": (batch, seq)}
    for label, cast in (("fp32", None), ("bf16_autocast", torch.bfloat16 if device == "cuda" else None)):
        if label == "bf16_autocast" and cast is None:
            inference[label] = {"status": "skipped on CPU (no bf16 units)"}
            continue
        inference[label] = {k: infer_rate(model, device, b, s, infer_runs, cast) for k, (b, s) in shapes.items()}
    bf16 = GPT2LMHeadModel(config).to(device, dtype=torch.bfloat16).eval() if device == "cuda" else None
    if bf16 is not None:
        bf16.set_attn_implementation("sdpa")
        inference["bf16_weights"] = {k: infer_rate(bf16, device, b, s, infer_runs, None)
                                     for k, (b, s) in shapes.items()}
    if device == "cuda":
        quantized, how = int8_model(GPT2LMHeadModel(config).to(device, dtype=torch.bfloat16).eval())
        inference["int8"] = {"status": how}
        if quantized is not None:
            try:
                inference["int8"].update({k: infer_rate(quantized, device, b, s, infer_runs, None)
                                          for k, (b, s) in shapes.items()})
            except Exception as error:
                inference["int8"]["status"] = f"not available: int8 forward failed: {type(error).__name__}: {error}"
    else:
        inference["int8"] = {"status": "not available on CPU in this check (CPU int8 is the quantize stage's path)"}
    inference["int8_matmul_kernel"] = int_mm_tops(device, 8192)
    for label, r in inference.items():
        print(f"inference {label}: {r}", flush=True)

    payload = {
        "benchmark": "gpu_check",
        "config": {"dry_run": args.dry_run, "device": device, "device_name": name, "model": config.to_dict()
                   if args.dry_run else "GPT2Config() (124M)", "parameters": sum(p.numel() for p in model.parameters()),
                   "batch": batch, "seq": seq, "steps_timed": steps, "steps_warmup": warmup,
                   "precision": precision, "attention": "sdpa", "optimizer": "AdamW(fused=True)",
                   "flops_per_token": fpt,
                   "flops_formula": "6*N + 12*n_layer*seq*n_embd (nanoGPT), N without the position embedding",
                   "flash_attn_package": importlib.util.find_spec("flash_attn") is not None},
        "environment": env,
        "results": {"matmul_ceiling_tflops": ceiling_tflops, "matmul_ceiling_by_size_gflops": ceiling,
                    "ceiling_dtype": str(ceiling_dtype), "nominal_peak_bf16_tflops": peak,
                    "training": training, "inference": inference},
    }
    common.write_json(args.output, payload)
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
