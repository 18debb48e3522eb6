"""Fixtures shared by several test modules, and how `make test` spreads the modules over its workers."""

import os
from pathlib import Path

import pytest
from dvc_repo import make_repo, run

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (before torch is imported): two workers on two cores, not four threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Modules that share the session fixture `tiny_run` run on one worker, so that it is built once.
TINY_RUN_MODULES = {"test_cli.py", "test_experiments.py", "test_remote.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per test module (`--dist loadgroup`): a module's expensive module-scoped fixture
    (a trained chain, a DVC repository) is built by one worker only."""
    for item in items:
        module = item.path.name
        item.add_marker(pytest.mark.xdist_group("tiny_run" if module in TINY_RUN_MODULES else module))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """A git + DVC repository where the whole chain ran once on profile=tiny and was committed (1-2 min).

    Shared by the tests that need real model folders or a committed run to experiment on; they must
    not change its workspace (copy what they modify, or run experiments in DVC's temporary workspaces).
    """
    dest = tmp_path_factory.mktemp("tiny_run") / "repo"
    env = make_repo(dest, ["profile=tiny"])
    run(["dvc", "repro"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "tiny run"], dest, env)
    return dest, env
