"""Issue 19, item 4: after a refused `dvc exp run -S prune.ffn=1.5` following `prune.ffn=0.5`, params.yaml holds
the rejected value, yet git may show it clean (the same size, and git trusts its stat cache), so
`git checkout params.yaml` restores nothing. `make params ARGS=--keep` recomposes params.yaml from conf/ and
the overrides kept in conf/make_params.yaml, always writing it, and leaves conf/make_params.yaml as it is."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@lmforge.invalid", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@lmforge.invalid", "PYTHONPATH": str(ROOT / "src")}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=GIT, check=True, capture_output=True, text=True).stdout


def make_params(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.compose", *args], cwd=repo, env=GIT, capture_output=True,
                          text=True, timeout=120)


def test_make_params_keep_restores_params_yaml_that_git_sees_as_clean(tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "conf", repo / "conf")
    assert make_params(repo, "profile=tiny", "prune.ffn=0.5").returncode == 0
    git(repo, "init", "-q")
    # git decides "unchanged" from its stat cache (size, mtime; ctime unless core.trustctime=false, as on file
    # systems whose ctime moves by itself): a rewrite of the same size and mtime then goes unseen
    git(repo, "config", "core.trustctime", "false")
    past = (repo / "params.yaml").stat().st_mtime - 60  # older than the index: not "racily clean", so not rehashed
    os.utime(repo / "params.yaml", (past, past))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny, prune.ffn=0.5")
    good, kept = (repo / "params.yaml").read_bytes(), (repo / "conf/make_params.yaml").read_bytes()

    # what the refused `dvc exp run -S prune.ffn=1.5` leaves: the same bytes but one value, same size and mtime
    params = repo / "params.yaml"
    stat = params.stat()
    bad = good.replace(b"ffn: 0.5\n", b"ffn: 1.5\n")
    assert bad != good and len(bad) == len(good)
    params.write_bytes(bad)
    os.utime(params, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert git(repo, "status", "--porcelain") == ""  # git does not see it...
    git(repo, "checkout", "params.yaml")
    assert params.read_bytes() == bad  # ...so the git recovery restores nothing

    result = make_params(repo, "--keep")
    assert result.returncode == 0, result.stderr
    assert params.read_bytes() == good
    assert (repo / "conf/make_params.yaml").read_bytes() == kept  # the kept overrides are kept
    assert git(repo, "status", "--porcelain") == ""
    assert "ffn: 0.5" in git(repo, "diff", "HEAD", "--", "params.yaml") + params.read_text()


def test_make_params_keep_takes_no_other_override(tmp_path):
    import shutil

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    result = make_params(tmp_path, "--keep", "prune.ffn=0.5")
    assert result.returncode == 2 and result.stderr.startswith("error: make params: --keep")
    assert not (tmp_path / "params.yaml").exists()
