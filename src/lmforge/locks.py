"""Stage locks: which process may write a stage's outputs, and which stages are running now.

DVC holds its repository lock while it plans a run but releases it while a stage's command runs, so lmforge
holds a lock of its own per stage (checkpoints/<stage>.lock) for the whole command. A second live instance of
the stage is refused; `make params` and `dvc exp run` refuse to rewrite params.yaml while any stage runs
(`running_stages`); the temporary folders a killed run left next to the stage's outputs are swept when the
stage next takes its lock. Core layer: imports nothing of lmforge but paths and errors.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from pathlib import Path

from lmforge import paths
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def is_main_process() -> bool:
    """True in a plain `python` run and in rank 0 of a `torchrun` / `accelerate launch` run."""
    return int(os.environ.get("RANK", "0")) == 0


class StageBusy(LmforgeError):
    """Another live process of the same stage holds its lock."""


def lock_path(stage: str, root: str | Path = ".") -> Path:
    return Path(root) / paths.CHECKPOINTS / f"{stage}.lock"


def lock_stage(stage: str):
    """Hold checkpoints/<stage>.lock for this process (an OS lock, released when the process ends, however it
    ends): a second live instance of the stage (an orphan of a killed `dvc repro`, a second repro) is refused
    before it touches the checkpoints, the curves or the outputs; `make params` and `dvc exp run` refuse to
    rewrite params.yaml while any stage holds its lock (`running_stages`). The file names its holder; a name
    left by a dead holder is a stale lock, reported and taken over, and the temporary folders that holder left
    next to the stage's outputs are removed (`sweep_leftovers`)."""
    path = lock_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release_stage
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its pid yet"
        handle.close()
        raise StageBusy(f"{stage}: {paths.CHECKPOINTS / stage} is in use by another {stage} run ({holder}); "
                        "wait for it to end, or stop it, then rerun") from None
    handle.seek(0)
    previous = handle.read().strip()
    if previous:
        log.info("%s: stale lock of a run that ended without releasing it (%s): taken over", path, previous)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    sweep_leftovers(stage)
    return handle


def release_stage(handle) -> None:
    handle.seek(0)
    handle.truncate()  # an empty lock file is a released one; a file with a pid and no OS lock is stale
    handle.flush()
    handle.close()


def running_stages(root: str | Path = ".") -> list[str]:
    """The stages whose lock a live process holds under `root`, each with its holder ("pretrain (pid 123, ...)").
    DVC releases its repository lock while a stage's command runs; these locks are held for all of it."""
    running = []
    for path in sorted((Path(root) / paths.CHECKPOINTS).glob("*.lock")):
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                running.append(f"{path.stem} ({handle.read().strip() or 'starting'})")
    return running


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# `.<name>.tmp-<pid>-...` (lmforge.artifacts.atomic_dir), `.<name>.tmp-trained` (the Trainer's save) and
# `.<name>.old-<pid>` (the previous folder while a new one is swapped in)
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(tmp|old)-(?:(?P<pid>\d+)(?:-|$))?")


def sweep_leftovers(stage: str) -> list[Path]:
    """Remove the temporary folders that a killed run of `stage` left next to its outputs (paths.PRODUCED_BY).
    Called with the stage's lock held, so no other live run of the stage writes them; a folder whose name
    records a pid is removed only if that process is gone. Returns what was removed."""
    removed = []
    for output, producer in paths.PRODUCED_BY.items():
        if producer != stage or not output.parent.is_dir():
            continue
        for entry in output.parent.glob(f".{output.name}.*"):
            match = LEFTOVER.match(entry.name)
            if not match or match["name"] != output.name or not entry.is_dir():
                continue
            if match["pid"] and int(match["pid"]) != os.getpid() and _pid_alive(int(match["pid"])):
                continue
            log.info("%s: removing %s, left by an interrupted run", stage, entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
