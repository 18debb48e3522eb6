"""The chain's speed and size, side by side: every model against the teacher at its best precision on this CPU.

    PYTHONPATH=src python benchmarks/chain_speed.py                 # ~5 min on 2 cores
    PYTHONPATH=src python benchmarks/chain_speed.py --rounds 3 --threads 1 --skip-teacher-onnx   # as committed

Two chains, random weights (speed and bytes depend on the shapes only):
  gpt2-124m  teacher GPT-2 12 x 768, vocabulary 50,257; student 6 x 512 (the seed's student shape); the student
             after structured pruning, approximated by its shape: half the FFN width (n_inner 2048 -> 1024;
             GPT2Config cannot express fewer heads at the same width); then every quantize method on the
             pruned student, and the task-only model (last position, two label rows of the head) in ONNX int8
  default    the default pipeline's shapes: teacher 4 x 128, vocabulary 1,024; student = pruned 2 x 128
             (unstructured pruning keeps the shape); every quantize method on it, and the task-only model

The baseline is the best a user could do without lmforge: the teacher in torch fp32 or in bf16 (its weights cast
with `.to(torch.bfloat16)`), whichever is faster in the same round on this CPU (bf16 wins with AVX512_BF16 or AMX,
loses badly without). Every ratio is stated against that best teacher (`speedup_vs_best_teacher`), and also
against the fp32 teacher (`speedup_vs_teacher`, the older reference). The task-only student is also compared with
the teacher asked for its label scores only (`teacher torch fp32|bf16 task-only`: the same two rows of its head),
the like-for-like ratio `task_chain_speedup_like_for_like`.

Each variant is timed on one 128-token review at batch 1 and on 16 of them, as a full forward (the task model:
its label scores). A round times every variant (median of `--runs` calls after a warm-up), the order reversed
every other round; ratios against the teacher are taken within a round, then the median over rounds, since the
machine's cores may be shared. Bytes are those of each artifact as the pipeline writes it (safetensors, ONNX).
ONNX Runtime and torch get the same threads (`--threads`); idle ORT threads do not spin. Writes
benchmarks/results/chain_speed.json with the CPU model and flags, and whether the issue's goals are met.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lmforge import hardware  # noqa: E402
from lmforge.compression import bf16, dynamic_int8, onnx_int8  # noqa: E402
from lmforge.compression.task_head import TaskModel  # noqa: E402
from lmforge.evaluation.metrics import time_ms  # noqa: E402

SEQ, LABELS = 128, [11, 42]
GOALS = {"ort_int8_over_torch_fp32_same_model": 2.5, "chain_speedup_batch1": 8.0, "chain_bytes_ratio": 0.12,
         "task_over_full": 1.3}


def gpt2(layers: int, width: int, heads: int, vocab: int, inner: int | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(layers * 1000 + width)
    config = GPT2Config(vocab_size=vocab, n_positions=1024 if vocab > 2000 else 128, n_embd=width, n_layer=layers,
                        n_head=heads, n_inner=inner, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def torch_call(model):
    def call(ids, mask):
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask).logits
    return call


def ort_call(path: Path, threads: int):
    session = onnx_int8.session(path, threads)
    name = session.get_outputs()[0].name

    def call(ids, mask):
        return session.run([name], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    return call


def file_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".onnx"))


def variants(chain: str, work: Path, threads: int, teacher_onnx: bool) -> tuple[dict, dict]:
    """{name: call} and {name: bytes}; the first is the teacher in torch fp32 (the reference)."""
    if chain == "gpt2-124m":
        teacher, student = gpt2(12, 768, 12, 50257), gpt2(6, 512, 8, 50257)
        pruned = gpt2(6, 512, 8, 50257, inner=1024)
    else:
        teacher, student = gpt2(4, 128, 4, 1024), gpt2(2, 128, 4, 1024)
        pruned = student
    calls, sizes = {}, {}

    def add(name, call, folder):
        calls[name], sizes[name] = call, file_bytes(folder)
        print(f"  {chain}: {name} ready ({sizes[name] / 1e6:.1f} MB)", flush=True)

    models = [("teacher", teacher), ("student", student)] + ([("pruned", pruned)] if pruned is not student else [])
    for name, model in models:
        model.save_pretrained(work / name)
        add(f"{name} torch fp32", torch_call(model), work / name)
        if name == "teacher":  # the user's other choice of precision without lmforge
            teacher_bf16, _ = bf16.to_bf16(teacher)
            teacher_bf16.save_pretrained(work / "teacher_bf16")
            add("teacher torch bf16", torch_call(teacher_bf16), work / "teacher_bf16")
            # the teacher asked for the label scores only, as the task-only student is: the like-for-like reference
            for precision, lm in (("fp32", teacher), ("bf16", teacher_bf16)):
                calls[f"teacher torch {precision} task-only"] = TaskModel(lm, LABELS).eval()
                sizes[f"teacher torch {precision} task-only"] = sizes[f"teacher torch {precision}"]
    base = models[-1][0]  # what quantize reads: the pruned model
    if teacher_onnx and chain == "gpt2-124m":
        onnx_int8.export_onnx(teacher, work / "teacher_fp32.onnx", max_len=SEQ)
        (work / "teacher_int8").mkdir()
        onnx_int8.quantize_onnx(work / "teacher_fp32.onnx", work / "teacher_int8/model.onnx", per_channel=True)
        (work / "teacher_fp32.onnx").unlink()
        add("teacher onnx_int8", ort_call(work / "teacher_int8/model.onnx", threads), work / "teacher_int8")

    # every quantize method on the pruned model
    quantized, _ = dynamic_int8.quantize_dynamic_int8(pruned, per_channel=True, include_lm_head=True)
    dynamic_int8.save_quantized(quantized, work / "dynamic_int8", manifest={"method": "dynamic_int8"})
    add(f"{base} dynamic_int8", torch_call(quantized), work / "dynamic_int8")
    half, _ = bf16.to_bf16(pruned)
    half.save_pretrained(work / "bf16")
    add(f"{base} bf16", torch_call(half), work / "bf16")
    (work / "onnx").mkdir()
    onnx_int8.export_onnx(pruned, work / "onnx/fp32.onnx", max_len=SEQ)
    (work / "onnx_fp32").mkdir()
    (work / "onnx/fp32.onnx").rename(work / "onnx_fp32/model.onnx")
    add(f"{base} onnx_fp32", ort_call(work / "onnx_fp32/model.onnx", threads), work / "onnx_fp32")
    onnx_int8.quantize_onnx(work / "onnx_fp32/model.onnx", work / "onnx/model.onnx", per_channel=True)
    add(f"{base} onnx_int8", ort_call(work / "onnx/model.onnx", threads), work / "onnx")
    (work / "task").mkdir()
    onnx_int8.export_task(TaskModel(pruned, LABELS), work / "task", per_channel=True, max_len=SEQ)
    add(f"{base} onnx_int8 task-only", ort_call(work / "task/task.onnx", threads), work / "task")
    task_torch = TaskModel(pruned, LABELS).eval()
    calls[f"{base} torch fp32 task-only"] = lambda ids, mask: task_torch(ids, mask)
    sizes[f"{base} torch fp32 task-only"] = sizes[f"{base} torch fp32"]
    return calls, sizes


def time_call(call, ids, mask, runs: int) -> float:
    with torch.inference_mode():
        return statistics.median(time_ms(lambda: call(ids, mask), runs))


def measure(calls: dict, rounds: int, runs: int, batch: int, vocab: int) -> dict:
    ids = torch.randint(1, vocab, (batch, SEQ), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    names = list(calls)
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            ms[name].append(time_call(calls[name], ids, mask, runs))
    reference = names[0]
    # the best teacher of each round: fp32 or bf16, whichever ran faster there
    best = [min(pair) for pair in zip(ms["teacher torch fp32"], ms["teacher torch bf16"], strict=True)]
    out = {}
    for name in names:
        ratios = [ref / own for ref, own in zip(ms[reference], ms[name], strict=True)]
        best_ratios = [ref / own for ref, own in zip(best, ms[name], strict=True)]
        out[name] = {"ms": common.summary(ms[name]), "speedup_vs_teacher": round(statistics.median(ratios), 3),
                     "speedup_vs_best_teacher": round(statistics.median(best_ratios), 3)}
    out["best_teacher"] = min(("teacher torch fp32", "teacher torch bf16"),
                              key=lambda n: statistics.median(ms[n]))
    return out


def goals(chain: dict, base: str) -> dict:
    """The issue's goals on the 124M-shape chain, each with the measured value and met / not met."""
    b1, sizes = chain["batch_1"], chain["bytes"]
    teacher_bytes = sizes["teacher torch fp32"]

    def ratio(a, b, key="batch_1"):
        return round(chain[key][b]["ms"]["median"] / chain[key][a]["ms"]["median"], 3)

    best = max((n for n in b1 if n.startswith(base) and "task" not in n),
               key=lambda n: b1[n]["speedup_vs_best_teacher"])
    out = {
        "ort_int8_over_torch_fp32_same_model": {
            "pruned": ratio(f"{base} onnx_int8", f"{base} torch fp32"),
            **({"teacher": ratio("teacher onnx_int8", "teacher torch fp32")} if "teacher onnx_int8" in b1 else {})},
        "chain_speedup_batch1": {"model": best, "value": b1[best]["speedup_vs_best_teacher"],
                                 "against": b1["best_teacher"], "vs_fp32_teacher": b1[best]["speedup_vs_teacher"]},
        "chain_bytes_ratio": {"model": best, "value": round(sizes[best] / teacher_bytes, 4)},
        "task_over_full": {"value": ratio(f"{base} onnx_int8 task-only", f"{base} onnx_int8")},
        "task_chain_speedup_batch1": b1[f"{base} onnx_int8 task-only"]["speedup_vs_best_teacher"],
    }
    # like for like: the task-only student against the teacher asked for the label scores only, at its best
    task_teacher = min(("teacher torch fp32 task-only", "teacher torch bf16 task-only"),
                       key=lambda n: b1[n]["ms"]["median"])
    out["task_chain_speedup_like_for_like"] = {"value": ratio(f"{base} onnx_int8 task-only", task_teacher),
                                               "against": task_teacher}
    ort = out["ort_int8_over_torch_fp32_same_model"]
    out["met"] = {
        "ort_int8_over_torch_fp32_same_model": all(v >= GOALS["ort_int8_over_torch_fp32_same_model"]
                                                   for v in ort.values()),
        "chain_speedup_batch1": out["chain_speedup_batch1"]["value"] >= GOALS["chain_speedup_batch1"],
        "chain_bytes_ratio": out["chain_bytes_ratio"]["value"] <= GOALS["chain_bytes_ratio"],
        "task_over_full": out["task_over_full"]["value"] >= GOALS["task_over_full"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", nargs="+", default=["gpt2-124m", "default"], choices=["gpt2-124m", "default"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed calls per variant and round (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-teacher-onnx", action="store_true", help="no ONNX export of the 124M teacher (~2 min)")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "chain_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = common.environment()
    env["cpu_native_bf16"] = hardware.bf16_supported()
    env["onnxruntime"] = __import__("onnxruntime").__version__
    results = {}
    for chain in args.chains:
        with tempfile.TemporaryDirectory(prefix=f"chain-{chain}-") as tmp:
            calls, sizes = variants(chain, Path(tmp), args.threads, not args.skip_teacher_onnx)
            vocab = 50257 if chain == "gpt2-124m" else 1024
            row = {"bytes": sizes,
                   "bytes_ratio_vs_teacher": {n: round(s / sizes["teacher torch fp32"], 4) for n, s in sizes.items()}}
            for batch in (1, 16):
                print(f"{chain}: timing batch {batch}", flush=True)
                row[f"batch_{batch}"] = measure(calls, args.rounds, args.runs if batch == 1 else max(1, args.runs - 1),
                                                batch, vocab)
            base = "pruned" if chain == "gpt2-124m" else "student"
            row["goals"] = goals(row, base)
            results[chain] = row
            print(f"  best teacher (the reference): batch 1 {row['batch_1']['best_teacher']}, "
                  f"batch 16 {row['batch_16']['best_teacher']}", flush=True)
            for name, r in row["batch_1"].items():
                if name == "best_teacher":
                    continue
                print(f"  {name:34s} b1 {r['ms']['median']:9.2f} ms {r['speedup_vs_best_teacher']:6.2f}x "
                      f"(vs fp32 {r['speedup_vs_teacher']:6.2f}x)   "
                      f"b16 {row['batch_16'][name]['speedup_vs_best_teacher']:6.2f}x   "
                      f"bytes {row['bytes_ratio_vs_teacher'][name]:.3f}", flush=True)
            print(f"  goals: {row['goals']}", flush=True)
    path = common.write_json(args.output, {
        "config": {"seq": SEQ, "rounds": args.rounds, "runs": args.runs, "threads": args.threads,
                   "reference": "the faster of teacher torch fp32 and teacher torch bf16 in each round "
                                "(speedup_vs_best_teacher); speedup_vs_teacher: the fp32 teacher", "goals": GOALS,
                   "pruned": "gpt2-124m: student with n_inner 1024 (half FFN), approximating structured pruning; "
                             "default: unstructured pruning keeps the student's shape"},
        "environment": env, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
