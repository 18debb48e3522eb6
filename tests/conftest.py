"""Fixtures shared by several test modules."""

from pathlib import Path

import pytest
from dvc_repo import make_repo, run


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
