"""A Hydra plugin that refuses to compose params.yaml while a stage of lmforge runs.

`dvc exp run` (Hydra enabled in .dvc/config) composes params.yaml from conf/ with Hydra before it runs
anything, and it gets DVC's repository lock even under a running `dvc repro`, because DVC releases that
lock while a stage's command runs. Left alone it then fails with "Stash apply resulted in merge
conflicts" and resets the uncommitted params.yaml and conf/make_params.yaml to HEAD. Hydra calls every
SearchPathPlugin when it composes, and DVC loads the plugins of `hydra.plugins_path` (.dvc/config:
src), so this is the first lmforge code that runs under `dvc exp run`: while any stage holds its lock
(checkpoints/<stage>.lock, lmforge.locks.lock_stage) it stops the composition with one line, and DVC
puts the workspace back as it was (its stash of the workspace is popped on the way out).

It changes no search path, and does nothing when no stage runs. It imports nothing of lmforge: DVC's
process may import another checkout's lmforge (an editable install) than the repository's, so the lock
probe is repeated here (the same as lmforge.locks.running_stages: a lock file whose OS lock is held).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

try:  # DVC prints the message of its own exceptions as one line: "ERROR: <message>"
    from dvc.exceptions import DvcException as _Base
except ImportError:  # composed outside DVC (make params checks the locks itself, first)
    _Base = RuntimeError


class StageRunning(_Base):
    """A stage of lmforge holds its lock: params.yaml must not be recomposed now."""


def repository_root(search_path: ConfigSearchPath) -> Path:
    """The folder of the config directory being composed (conf/ of the repository), else the working folder."""
    for element in search_path.get_path():
        path = (element.path or "").removeprefix("file://")
        if element.provider == "main" and path.startswith("/"):  # initialize_config_dir: an absolute folder
            return Path(path).resolve().parent
    return Path.cwd()


def running_stages(root: Path) -> list[str]:
    """The stages whose checkpoints/<stage>.lock a live process holds, each with its holder."""
    running = []
    for path in sorted((root / "checkpoints").glob("*.lock")):
        try:
            with open(path, encoding="utf-8") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                except BlockingIOError:
                    running.append(f"{path.stem} ({handle.read().strip() or 'starting'})")
        except OSError:
            continue
    return running


class LmforgeStageGuard(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        running = running_stages(repository_root(search_path))
        if running:
            raise StageRunning(f"lmforge: a stage is running ({', '.join(running)}); params.yaml is not recomposed "
                               "while it runs, so this experiment was not started and the workspace is as it was: "
                               "wait for the running `dvc repro` / `dvc exp run` to finish, then run it again")
