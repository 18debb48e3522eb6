"""A throw-away git + DVC copy of this repository, for the tests that run the pipeline under DVC."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-6000:]}"
    return output


def repo_env(repo: Path) -> dict:
    """The environment to run git, DVC and the stages in `repo` with: its own src, one thread, no analytics."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
            "GIT_AUTHOR_NAME": "lmforge-test", "GIT_AUTHOR_EMAIL": "test@lmforge.invalid",
            "GIT_COMMITTER_NAME": "lmforge-test", "GIT_COMMITTER_EMAIL": "test@lmforge.invalid"}


def copy_repo(source: Path, dest: Path) -> dict:
    """A private copy of the repository `source` (git history, DVC cache, workspace, file times kept), for a
    test that changes it; DVC's temporary folder (locks, queue) is left behind. Its environment."""
    shutil.copytree(source, dest, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return repo_env(dest)


def make_repo(dest: Path, overrides: list[str]) -> dict:
    """A git repository holding the project's files (committed or not), params.yaml composed with `overrides`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "plots/", "reports/", "dvclive/")) \
                and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    env = repo_env(dest)
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run([sys.executable, "-m", "lmforge.compose", *overrides], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "test profile"], dest, env)
    return env


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def curve_steps(repo: Path, stage: str) -> list[int]:
    rows = (repo / f"dvclive/{stage}/plots/metrics/loss.tsv").read_text().splitlines()
    column = rows[0].split("\t").index("step")
    return [int(row.split("\t")[column]) for row in rows[1:]]


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return re.findall(r"Running stage '(\w+)'", output)
