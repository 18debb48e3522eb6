"""Shared by the benchmark scripts: the machine's description, a measured matmul ceiling, statistics, JSON."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lmforge import artifacts
from lmforge.hardware import cpu_flags, cpu_model

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    env["thread_env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS",
                                                    "TOKENIZERS_PARALLELISM") if k in os.environ}
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def matmul_gflops(n: int, dtype: torch.dtype = torch.float32, device: str = "cpu", reps: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matrix product (2 n^3 FLOPs) over `reps` timed runs."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def matmul_ceiling(sizes: tuple[int, ...] = (512, 1024, 2048), **kwargs: Any) -> dict[str, float]:
    """GFLOP/s per size; the ceiling is the best of them."""
    return {str(n): round(matmul_gflops(n, **kwargs), 2) for n in sizes}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    if hasattr(os, "getloadavg"):
        payload.setdefault("environment", {})["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    artifacts.write_json(path, payload, list_non_finite="non_finite")  # lmforge's one strict JSON writer
    return path
