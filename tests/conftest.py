"""Fixtures shared by several test modules, and how `make test` spreads the tests over its workers."""

import fcntl
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from dvc_repo import copy_repo, make_repo, repo_env, run

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (before torch is imported): two workers on two cores, not four threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Seconds each xdist group takes on one core of the development machine (`--durations`, 2026-12-07). The
# groups go to the workers longest first, so that the last ones to start are short and both workers finish
# at about the same time (xdist's own order is by number of tests, which put a one-test 3-minute module last).
# A group not listed counts as 0 s: it runs after these, in file order.
GROUP_SECONDS = {
    "test_pipeline_e2e.py::encoder": 170,
    "test_experiments.py": 150,
    "test_distributed.py": 120,
    "test_resume.py": 90,
    "test_benchmarks.py": 90,
    "test_prune_stage.py": 80,
    "test_reliability.py": 80,
    "test_pretrained_smollm2.py": 70,
    "test_stage_errors.py": 60,
    "test_pipeline_e2e.py": 50,
    "test_cli.py": 40,
    "test_gpu_profile.py": 40,
    "test_quantize_stage.py": 35,
    "test_onnx_int8.py": 35,
    "test_data_preprocess.py": 35,
    "test_encoders.py": 30,
    "test_encoder_compression.py": 30,
    "test_evaluation.py": 20,
    "test_training.py": 20,
}


def xdist_group(item: pytest.Item) -> str:
    """The test's xdist group: its module, so that a module-scoped fixture (a trained chain, a DVC repository)
    is built by one worker only; a module with two such fixtures is two groups (`<module>::<part>`)."""
    module = item.path.name
    if module == "test_pipeline_e2e.py" and "encoder_repo" in getattr(item, "fixturenames", ()):
        return f"{module}::encoder"
    return module


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the longest-first order set below


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `--dist loadgroup`, handed out longest first (a stable sort: file order within a group).

    Without tryfirst, xdist's hook ran first, found no group, and every test was a group of its own: a
    module's fixture (the DDP runs, the prune chain, the tiny run) was built again on the other worker.
    """
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
        if "tiny_run" in getattr(item, "fixturenames", ()):  # also through another fixture: a real pipeline ran
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: -GROUP_SECONDS.get(xdist_group(item), 0))


class TinyRun(NamedTuple):
    path: Path  # the repository
    env: dict  # the environment to run git, DVC and the stages in it
    output: str  # what its `dvc repro` printed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> TinyRun:
    """A git + DVC repository where the whole chain ran once on profile=tiny and was committed (1-2 min).

    Built once per `pytest` run, by the first worker that needs it (the other waits for it), in the folder
    the workers share. Read it only, and run no DVC command in it (DVC's lock is per repository): a test that
    runs DVC or changes files works on `tiny_run_copy`.
    """
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # pytest-of-<user>/pytest-<n>, above each worker's own popen-gw<i>
    home = shared / "tiny_run"
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        done = home / "dvc_repro.log"
        if not done.exists():
            repo = home / "repo"
            if repo.exists():  # a build that failed in another worker: start over
                shutil.rmtree(repo)
            repo.mkdir(parents=True)
            env = make_repo(repo, ["profile=tiny"])
            output = run(["dvc", "repro"], repo, env)
            run(["git", "add", "-A"], repo, env)
            run(["git", "commit", "-qm", "tiny run"], repo, env)
            done.write_text(output)
    return TinyRun(home / "repo", repo_env(home / "repo"), done.read_text())


@pytest.fixture(scope="module")
def tiny_run_copy(tiny_run, tmp_path_factory) -> TinyRun:
    """A copy of `tiny_run` for one test module, to run DVC in and change: `dvc repro` finds it up to date."""
    dest = tmp_path_factory.mktemp("tiny_run_copy") / "repo"
    return TinyRun(dest, copy_repo(tiny_run.path, dest), tiny_run.output)
