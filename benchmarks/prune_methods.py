"""Accuracy per millisecond of every prune method on the chain's own student (how the default was chosen).

    PYTHONPATH=src .venv/bin/python benchmarks/prune_methods.py --chain .     # after `dvc repro distill`

For each variant, the real prune stage runs (calibration, method, 100 KD recovery steps, gate off) in a
folder of its own that links the chain's data/processed, models/student and models/teacher; then every
pruned model and the student are timed side by side in alternating rounds (one forward pass over
`--seq-len` tokens at batch 1, medians over rounds). Accuracy and perplexities are the stage's own
validation measurements after recovery (metrics/prune.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import RESULTS, environment, write_json

from lmforge import paths
from lmforge.evaluation.metrics import count_parameters, time_ms
from lmforge.modeling.io import load_model

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "l1_50": ["prune=l1_unstructured"],
    "wanda_50": ["prune=wanda"],
    "wanda_2of4": ["prune=wanda", "prune.amount=null", "prune.n_m=[2,4]"],
    "structured_ffn50": ["prune=structured"],
    "structured_ffn75": ["prune=structured", "prune.ffn=0.75"],
    "structured_layers50": ["prune=structured", "prune.ffn=0.0", "prune.layers=0.5"],
    "lowrank_0.5": ["prune=lowrank", "prune.rank_ratio=0.5"],
    "lowrank_0.25": ["prune=lowrank"],
    "structured_lowrank": ["prune=structured_lowrank"],
}


def run_variant(chain: Path, work: Path, name: str, overrides: list[str], threads: int) -> dict:
    folder = work / name
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    for link, target in (("data/processed", "data/processed"), ("models/student", "models/student"),
                         ("models/teacher", "models/teacher")):
        if not (folder / link).exists():
            (folder / link).symlink_to((chain / target).resolve())
    if not (folder / "conf").exists():  # compose reads conf/ from the working directory
        (folder / "conf").symlink_to(REPO / "conf")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "lmforge.compose", *overrides, "prune.gate=null"], cwd=folder, env=env,
                   check=True, capture_output=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "stages/prune.py")], cwd=folder, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{name}: prune stage failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((folder / "metrics/prune.json").read_text())
    metrics["stage_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


@torch.inference_mode()
def latencies(models: dict[str, torch.nn.Module], seq_len: int, rounds: int, reps: int) -> dict[str, float]:
    ids = torch.randint(0, 1000, (1, seq_len), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for model in models.values():
        model(input_ids=ids)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model = models[name]
            times[name].append(statistics.median(time_ms(lambda: model(input_ids=ids), reps, warmup=0)))  # noqa: B023
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chain", type=Path, default=Path("."),
                        help="holds data/processed and models/{student,teacher}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-prune-methods"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS / "prune_methods.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    stage_metrics = {name: run_variant(args.chain, args.work, name, VARIANTS[name], args.threads) for name in names}

    cwd = os.getcwd()
    models = {}
    os.chdir(args.chain)
    models["student"] = load_model(paths.model_dir("student"))
    for name in names:
        os.chdir(args.work / name)
        models[name] = load_model(paths.model_dir("pruned"))
    os.chdir(cwd)
    ms = latencies(models, args.seq_len, args.rounds, args.reps)
    student = stage_metrics[names[0]]["validation"]["student"]
    teacher = stage_metrics[names[0]]["validation"]["teacher"]
    rows = {"student": {**count_parameters(models["student"]), **student, "p50_ms": round(ms["student"], 3),
                        "speedup": 1.0}}
    for name in names:
        m = stage_metrics[name]
        recovered, before = m["validation"]["recovered"], m["validation"]["pruned"]
        rows[name] = {**count_parameters(models[name]), **recovered, "before_recovery": before,
                      "bytes_on_disk": m["bytes_on_disk"]["after"], "p50_ms": round(ms[name], 3),
                      "speedup": round(ms["student"] / ms[name], 3),
                      "accuracy_per_ms": round(recovered["accuracy"] / ms[name], 4),
                      "stage_seconds": m["stage_seconds"]}
    payload = {"config": {"variants": {n: VARIANTS[n] for n in names}, "threads": args.threads,
                          "seq_len": args.seq_len, "rounds": args.rounds, "reps": args.reps},
               "environment": environment(), "teacher": teacher, "results": rows}
    print(write_json(args.output, payload))


if __name__ == "__main__":
    main()
