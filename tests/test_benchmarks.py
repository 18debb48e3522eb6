"""The benchmark scripts run end to end on tiny settings and write sane JSON (no wall-clock assertions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # each test runs a benchmark script in a process of its own


def run(script: str, *args: str, output: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["PYTHON"] = sys.executable  # gpu_check.sh: this interpreter, whatever venv the tests run in
    command = ["bash", str(ROOT / script)] if script.endswith(".sh") else [sys.executable, str(ROOT / script)]
    subprocess.run([*command, *args, "--output", str(output)], cwd=ROOT, env=env, check=True, timeout=600,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return json.loads(output.read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_train_throughput_compares_the_stage_loop_with_a_minimal_loop(tmp_path):
    result = run("benchmarks/train_throughput.py", "--steps", "3", "--warmup", "1", "--rounds", "2", "--threads", "1",
                 "--ceiling-sizes", "128,256", "--override", "profile=tiny", output=tmp_path / "train.json")
    assert {"config", "environment", "results"} <= set(result)
    assert result["environment"]["torch_threads"] == 1 and result["environment"]["torch"]
    assert result["config"]["batch_size"] == 8 and result["config"]["block_size"] == 32  # the tiny profile's
    res = result["results"]
    assert len(res["rounds"]) == 2 and {r["order"] for r in res["rounds"]} == {"stage-minimal", "minimal-stage"}
    for key in ("stage_tokens_per_s", "minimal_tokens_per_s", "ratio", "ratio_median_step"):
        assert positive(res[key]["median"]) and res[key]["min"] <= res[key]["median"] <= res[key]["max"], key
    assert positive(res["matmul_ceiling_gflops"])
    assert 0 < res["mfu_stage"] < 1 and 0 < res["mfu_minimal"] < 1
    assert res["goal_met"] is (res["ratio"]["median"] >= res["goal_ratio"])  # the verdict on the numbers shown


def test_preprocess_throughput_compares_pack_with_the_tokenizer(tmp_path):
    result = run("benchmarks/preprocess_throughput.py", "--rounds", "2", "--max-docs", "40", "--no-wikitext",
                 "--override", "profile=tiny", output=tmp_path / "preprocess.json")
    (entry,) = result["results"]
    assert entry["documents"] == 40 and positive(entry["tokens"])
    for key in ("stage_tokens_per_s", "tokenizer_tokens_per_s", "ratio"):
        assert positive(entry[key]["median"]), key
    assert entry["goal_met"] is (entry["ratio"]["median"] >= entry["goal_ratio"])


def test_gpu_check_dry_run_exercises_the_gpu_script_on_a_cpu(tmp_path):
    result = run("benchmarks/gpu_check.sh", "--dry-run", "--threads", "1", output=tmp_path / "gpu.json")
    assert result["config"]["dry_run"] and result["config"]["device"] == "cpu"
    res = result["results"]
    assert positive(res["matmul_ceiling_tflops"])
    train = res["training"]["eager"]
    assert positive(train["tokens_per_s"]) and 0 < train["mfu_vs_measured_ceiling"] < 1
    assert math.isfinite(train["loss"])
    assert positive(res["inference"]["fp32"]["throughput"]["tokens_per_s"])
    assert res["inference"]["int8"]["status"].startswith("not available")


def test_compression_speed_measures_every_variant_against_dense(tmp_path):
    result = run("benchmarks/compression_speed.py", "--shapes", "default_4x128", "--rounds", "1", "--reps", "1",
                 "--seq-len", "16", "--threads", "1", "--pruned", "", output=tmp_path / "compression.json")
    rows = result["results"]["default_4x128"]["variants"]
    assert set(rows) == {"dense", "l1_50", "wanda_50", "wanda_2of4", "structured_25", "structured_50",
                         "lowrank_0.5", "lowrank_0.25"}
    dense = rows["dense"]["non_embedding_parameters"]
    assert rows["structured_25"]["non_embedding_parameters"] == pytest.approx(0.75 * dense, rel=0.02)
    assert rows["structured_50"]["non_embedding_parameters"] == pytest.approx(0.5 * dense, rel=0.02)
    assert rows["wanda_2of4"]["bitmask_bytes_ratio"] < 1 == rows["wanda_2of4"]["bytes_ratio"]
    assert rows["lowrank_0.25"]["bytes_ratio"] < 1 and rows["structured_50"]["bytes_ratio"] < 1
    for row in rows.values():
        assert positive(row["speedup_batch1"]["median"]) and positive(row["ms_batch16"])
    assert result["environment"]["cpu"] and "cpu_flags" in result["environment"]


def test_kd_memory_compares_the_plain_and_the_chunked_distillation_loss(tmp_path):
    result = run("benchmarks/kd_memory.py", "--tiny", "--steps", "2", "--rounds", "1", "--threads", "1",
                 output=tmp_path / "kd.json")
    for variant in ("plain", "chunked"):
        assert positive(result["result"][variant]["step_s"]["median"])
        assert result["result"][variant]["peak_rss_mb"]["median"] > 0
    assert positive(result["ratios"]["step_time_chunked_over_plain"])
    assert result["environment"]["cpu"]


def test_precision_speed_compares_fp32_with_bf16_and_records_what_auto_picks(tmp_path):
    result = run("benchmarks/precision_speed.py", "--models", "default", "--rounds", "2", "--steps", "1",
                 "--threads", "1", output=tmp_path / "precision.json")
    assert result["environment"]["cpu"] and "cpu_native_bf16" in result["environment"]
    entry = result["results"]["default"]
    for kind in ("train", "inference"):
        assert positive(entry[kind]["fp32_tokens_per_s"]["median"])
        assert positive(entry[kind]["bf16_over_fp32"]["median"])
        assert entry[kind]["auto_decision"]["precision"] in ("fp32", "bf16")
        assert entry[kind]["auto_matches_measurement"] == (
            entry[kind]["auto_decision"]["precision"] == entry[kind]["measured_faster"])


def test_chain_speed_measures_every_method_against_the_teacher(tmp_path):
    result = run("benchmarks/chain_speed.py", "--chains", "default", "--rounds", "1", "--runs", "1", "--threads", "1",
                 output=tmp_path / "chain.json")
    assert result["environment"]["cpu_flags"] is not None and result["environment"]["onnxruntime"]
    chain = result["results"]["default"]
    for method in ("dynamic_int8", "bf16", "onnx_int8", "onnx_int8 task-only"):
        assert positive(chain["batch_1"][f"student {method}"]["speedup_vs_teacher"])
        assert positive(chain["batch_16"][f"student {method}"]["ms"]["median"])
    assert chain["batch_1"]["teacher torch fp32"]["speedup_vs_teacher"] == 1.0
    # the reference is the teacher at its best precision on this CPU: the faster of fp32 and bf16, per round
    best = chain["batch_1"]["best_teacher"]
    assert best in ("teacher torch fp32", "teacher torch bf16")
    assert chain["batch_1"][best]["speedup_vs_best_teacher"] == 1.0
    for name, row in chain["batch_1"].items():
        if name != "best_teacher":  # nothing is measured faster against the best teacher than against fp32's
            assert row["speedup_vs_best_teacher"] <= row["speedup_vs_teacher"] + 1e-9, name
    assert chain["goals"]["chain_speedup_batch1"]["against"] == best
    # the task-only student is also compared with the teacher asked for the label scores only
    like = chain["goals"]["task_chain_speedup_like_for_like"]
    assert like["against"] in ("teacher torch fp32 task-only", "teacher torch bf16 task-only")
    assert positive(like["value"]) and positive(chain["batch_1"][like["against"]]["ms"]["median"])
    assert chain["bytes_ratio_vs_teacher"]["student onnx_int8"] < chain["bytes_ratio_vs_teacher"]["student torch fp32"]
    assert set(chain["goals"]["met"]) == {"ort_int8_over_torch_fp32_same_model", "chain_speedup_batch1",
                                          "chain_bytes_ratio", "task_over_full"}
