"""Experiments as a DVC user runs them: a readable `dvc exp show`, and a queued sweep.

Both use a copy of the committed tiny run of the session fixture `tiny_run`; queued experiments run in
DVC's temporary workspaces, which hold only git- and DVC-tracked files, so the sweep also checks that the
pipeline needs nothing else.
"""

import json
import subprocess
import time

import pytest
from dvc_repo import run

pytestmark = pytest.mark.slow

HEADLINE = "metrics/headline.json"


def test_the_only_dvc_metrics_are_the_headline_numbers(tiny_run_copy):
    repo, env, _ = tiny_run_copy
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))
    files = {name for data in shown.values() for name in data["data"]}
    assert files == {HEADLINE}
    headline = json.loads((repo / HEADLINE).read_text())
    assert set(headline["quantized"]) == {"accuracy", "validation_accuracy", "ppl_general", "ppl_domain", "mb",
                                          "p50_ms", "speedup"}
    assert headline["recommended"] in ("teacher", "student", "pruned", "quantized")
    # the detailed records are still there for whoever reads them
    assert "sources" in json.loads((repo / "metrics/preprocess.json").read_text())
    columns = run(["dvc", "exp", "show", "--csv"], repo, env).splitlines()[0].split(",")
    numbers = {"accuracy", "validation_accuracy", "ppl_general", "ppl_domain", "mb", "p50_ms", "speedup"}
    metric_columns = [c for c in columns if c == "recommended" or c.rsplit(".", 1)[-1] in numbers]
    assert len(metric_columns) == 7 * 5 + 2 + 1  # was 230 metric columns (384 in all) before headline.json


def test_a_queued_sweep_runs_both_experiments(tiny_run_copy):
    repo, env, _ = tiny_run_copy
    # a sweep of one quantize parameter (int8 in blocks of 16 or 32 input channels, each block its own scale):
    # each experiment reruns validate, quantize and evaluate only. -S profile=tiny: DVC recomposes params.yaml
    # from conf/ with only the overrides given
    out = run(["dvc", "exp", "run", "--queue", "-S", "profile=tiny", "-S", "quantize.block_size=16,32"], repo, env)
    assert out.count("Queued experiment") == 2
    run(["dvc", "queue", "start"], repo, env)
    try:
        deadline = time.monotonic() + 900
        while True:
            status = run(["dvc", "queue", "status"], repo, env)
            if not any(state in status for state in ("Queued", "Running")):
                break
            assert time.monotonic() < deadline, f"the queue did not finish in 15 minutes:\n{status}"
            time.sleep(5)
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True)
    assert status.count("Success") == 2, status

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                block = data["params"]["params.yaml"]["data"]["quantize"]["block_size"]
                experiments[block] = data["metrics"][HEADLINE]["data"]
    assert set(experiments) == {16, 32}
    fine, coarse = experiments[16], experiments[32]
    assert fine["quantized"]["mb"] > coarse["quantized"]["mb"]  # twice the scales
    assert fine["quantized"]["ppl_domain"] != coarse["quantized"]["ppl_domain"]
    # upstream of quantize nothing reran: the other models' numbers other than their latency are the same
    for name in ("teacher", "pruned"):
        for key in ("accuracy", "ppl_domain", "mb"):
            assert fine[name][key] == coarse[name][key], (name, key)
