"""Which precision is fast on this machine, decided by measuring rather than by CPU flags (and, for int8
weights in ONNX Runtime, the one rule that does follow the flags: `int8_weights`, `session_options`).

`precision: auto` (training and evaluation): bf16 on a GPU; on a CPU, bf16 only where a short probe
(a few matrix products at the model's width, fp32 against bf16, forward for inference and forward +
backward for training) shows bf16 faster. CPUs with native bf16 units (AVX512_BF16, AMX) run bf16 matmuls
2-5x faster than fp32; AVX2-only CPUs emulate it 10-100x slower. `fp32` / `bf16` / `fp16` force a choice.

    decision = choose_precision("auto", kind="training", width=768)
    decision["precision"]      # "fp32" | "bf16" | "fp16"
    decision                   # plus why, and the probe's milliseconds: stored in the stage's metrics

`decide` is the pure rule (tests drive it with given timings); `probe` does the measuring.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# bf16 must beat fp32 by this factor: it also costs accuracy and casts, so a tie goes to fp32.
MIN_SPEEDUP = 1.1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for every table of measurements."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD features that decide CPU matmul speed (AVX2 / AVX-512 / VNNI / AMX / bf16): the same model
    name covers AVX2-only and AVX-512 EPYCs, so every table records these too."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512_BF16 / AMX); without them bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _best_ms(fn: Any, reps: int, budget_s: float = 0.05) -> float:
    """Best time of `fn` over at least `reps` runs, more (up to 50) while they fit in `budget_s`: a small
    product takes microseconds, and the best of many is what survives a shared machine's pre-emptions."""
    start = time.perf_counter()
    fn()  # warm-up: oneDNN picks and caches its kernel on the first call
    first = time.perf_counter() - start
    reps = max(reps, min(50, int(budget_s / max(first, 1e-6))))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def probe(kind: str = "inference", width: int = 512, tokens: int = 256, reps: int = 3) -> dict[str, float]:
    """Milliseconds (best of `reps` or more) of a (tokens x width) @ (width x 4 width) product in fp32 and
    under bf16 autocast; kind="training" times forward + backward. Takes well under a second.

    One thread: the ratio is a property of the core's units, and with two threads on a shared machine
    one pre-empted OpenMP thread stalls the other, so 2-thread timings swung 100x between runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _probe(kind, width, tokens, reps)
    finally:
        torch.set_num_threads(before)


def _probe(kind: str, width: int, tokens: int, reps: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    w = torch.randn(width, 4 * width, generator=generator, requires_grad=kind == "training")

    def run(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            if kind == "training":
                (x @ w).float().sum().backward()
                w.grad = None
            else:
                with torch.no_grad():
                    x @ w

    fp32, bf16 = _best_ms(lambda: run(None), reps), _best_ms(lambda: run(torch.bfloat16), reps)
    return {"fp32_ms": round(fp32, 3), "bf16_ms": round(bf16, 3), "bf16_speedup": round(fp32 / bf16, 3),
            "width": width, "tokens": tokens, "kind": kind}


def decide(device: str, fp32_ms: float | None = None, bf16_ms: float | None = None,
           min_speedup: float = MIN_SPEEDUP) -> tuple[str, str]:
    """The rule of `precision: auto`: (precision, reason). bf16 on a GPU; on a CPU bf16 only if the probe
    measured it at least `min_speedup` times faster than fp32."""
    if device == "cuda":
        return "bf16", "GPU"
    if fp32_ms is None or bf16_ms is None:
        raise ValueError("on a CPU, auto needs the probe's fp32 and bf16 timings")
    speedup = fp32_ms / bf16_ms
    if speedup >= min_speedup:
        return "bf16", f"CPU probe: bf16 {speedup:.2f}x faster than fp32 (>= {min_speedup}x)"
    return "fp32", f"CPU probe: bf16 {speedup:.2f}x the speed of fp32 (< {min_speedup}x)"


def choose_precision(requested: str, *, kind: str, width: int = 512) -> dict[str, Any]:
    """Resolve a configured precision to the one to run; the result says why (for the metrics).

    A forced bf16 on a CPU without native bf16 runs (emulated, slowly) with a warning; a forced fp16 on
    a CPU fails here with a clear message, before any work.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"invalid precision {requested!r} (expected one of {', '.join(PRECISIONS)})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"requested": requested, "device": device,
                           "cpu_native_bf16": bf16_supported() if device == "cpu" else None}
    if requested != "auto":
        if device == "cpu" and requested == "fp16":
            raise ConfigError("precision 'fp16' needs a GPU (CPU kernels for fp16 training are missing or "
                              "very slow); use 'auto', 'fp32' or 'bf16' on this machine")
        if device == "cpu" and requested == "bf16" and not out["cpu_native_bf16"]:
            log.warning("precision 'bf16' forced on a CPU without native bf16 (no AVX512_BF16 / AMX): it runs, "
                        "emulated, typically 10-100x slower than fp32; 'auto' would pick fp32")
        return {**out, "precision": requested, "reason": "forced"}
    if device == "cuda":
        precision, reason = decide(device)
        return {**out, "precision": precision, "reason": reason}
    timings = probe(kind, width=width)
    precision, reason = decide(device, timings["fp32_ms"], timings["bf16_ms"])
    log.info("precision auto (%s): %s (%s)", kind, precision, reason)
    return {**out, "precision": precision, "reason": reason, "probe": timings}


def autocast(precision: str) -> Any:
    """The context to run a fp32 model's inference in `precision` (a no-op for fp32)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


# --------------------------------------------------------------------------------------------------
# int8 on a CPU: 8-bit or 7-bit weights (ONNX Runtime's u8s8 kernels)
# --------------------------------------------------------------------------------------------------

# Any of these: the CPU multiplies u8 x s8 and adds in 32 bits (VPDPBUSD / AMX TDPBUSD), no saturation.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# ONNX Runtime's remedy for 8-bit weights on a CPU without VNNI: its AVX2 graph transformer turns the s8 weights
# into u8 and runs U8U8 kernels (no 16-bit pair sums). Ignored where VNNI is present.
U8U8_OPTION = {"session.x64quantprecision": "1"}


def has_vnni(flags: list[str] | None = None) -> bool:
    """Whether this CPU (or the given `cpu_flags()` list) has int8 dot products that add in 32 bits."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in VNNI_FLAGS)


def int8_weights(flags: list[str] | None = None) -> dict[str, Any]:
    """The rule for ONNX Runtime's dynamic int8 (u8 activations x s8 weights), from the CPU flags.

    With VNNI: 8-bit weights (reduce_range False): the products add in 32 bits. Without: u8s8 kernels add pairs
    of products in 16 bits, which 8-bit weights saturate (the SmolLM2 student: 0.871 -> 0.000 accuracy on the
    AVX2-only EPYC), so the weights take 7 bits (reduce_range True), the path measured there (0.836). The
    decision is stored in the quantized folder; `session_options` below applies the U8U8 option when a file
    with 8-bit weights is loaded on a CPU without VNNI."""
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in VNNI_FLAGS if flag in flags]
    if found:
        return {"weight_bits": 8, "reduce_range": False, "vnni": True,
                "reason": f"VNNI ({', '.join(found)}): u8s8 products add in 32 bits, 8-bit weights do not saturate"}
    return {"weight_bits": 7, "reduce_range": True, "vnni": False,
            "reason": "no VNNI (" + ", ".join(VNNI_FLAGS) + " absent): u8s8 kernels add product pairs in 16 bits; "
                      "7-bit weights keep them from saturating"}


def session_options(weight_bits: int | None, flags: list[str] | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries for an int8 file with `weight_bits`-bit weights on this CPU: the
    U8U8 option where 8-bit weights meet a CPU without VNNI, none otherwise (7-bit weights, VNNI, or a file
    with no MatMulInteger weights: weight_bits None)."""
    if weight_bits == 8 and not has_vnni(flags):
        return dict(U8U8_OPTION)
    return {}
