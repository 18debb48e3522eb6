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

# Seconds each group took with both workers busy (`--durations=0`, 2026-12-08, on the 2-core development machine;
# only their proportions matter). The groups go to the workers longest first, so that the last to start are short
# and both workers finish at about the same time (xdist's own order is by number of tests, which left one-test
# modules of minutes for the end). The first group to need the session's tiny run builds it (80 of
# test_experiments.py's 220 s); a group not listed counts as 0 s and runs after these.
GROUP_SECONDS = {
    "test_experiments.py": 220,
    "test_fsdp.py": 160,
    "test_pretrained_smollm2.py": 140,
    "test_transfer.py": 110,
    "test_benchmarks.py": 100,
    "test_pipeline_e2e.py::encoder": 90,
    "test_reliability.py": 80,
    "test_quantize_stage.py": 65,
    "test_prune_stage.py": 60,
    "test_distributed.py": 60,
    "test_resume.py": 45,
    "test_onnx_int8.py": 38,
    "test_data_preprocess.py": 32,
    "test_int8_choice.py": 31,
    "test_stage_errors.py": 29,
    "test_reliability_stable_outputs.py": 28,
    "test_reliability_locks.py": 26,
    "test_encoder_compression.py": 26,
    "test_evaluation.py": 16,
    "test_config.py": 12,
    "test_gpu_profile.py": 11,
    "test_cli.py": 6,
    "test_pipeline_e2e.py": 5,
}


def group_of(nodeid: str) -> str:
    """The test's group: its module, so that a module-scoped fixture (the DDP runs, a DVC repository) is built
    by one worker only; the encoder chain of test_pipeline_e2e.py is a group of its own (its own repository)."""
    path, _, name = nodeid.partition("::")
    module = Path(path).name
    if module == "test_pipeline_e2e.py" and "encoder" in name:
        return f"{module}::encoder"
    return module


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadgroup` by `group_of`. xdist 3.8 marks a group by appending `@group` to `item._nodeid`,
    which pytest 9 no longer reads (a node's id is `item._id`): every test was a group of its own, so each
    worker built the module fixtures again (the DDP runs twice, the tiny run twice, the prune chain twice)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByGroup(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the longest-first order of the collection (below)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups handed out longest first: the collection sorted by GROUP_SECONDS (a stable sort: file order within
    a group); a test that uses the tiny run is `slow` (a real pipeline ran for it)."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):  # also through another fixture
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: -GROUP_SECONDS.get(group_of(item.nodeid), 0))


class TinyRun(NamedTuple):
    path: Path  # the repository
    env: dict  # the environment to run git, DVC and the stages in it
    output: str  # what its `dvc repro` printed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """A git + DVC repository where the whole chain ran once on profile=tiny and was committed (1-2 min).

    Built once per `pytest` run, by the first worker that needs it (the other waits for it), in the folder
    the workers share. Read it only, and run no DVC command in it (DVC's lock is per repository): a test that
    runs DVC or changes files works on `tiny_run_copy`.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
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
