"""The common frame of every stage entrypoint: logging, clean exits on user errors, the stage locks, and the
metrics writer."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge import paths
from lmforge.artifacts import guard_replacements, write_json
from lmforge.config import PARAMS_FILE
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def _params_digest() -> str | None:
    try:
        return hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


# Stages that take their lock here, for their whole run. The training stages take it in
# lmforge.training.runner.fit, in the main process only (every rank of a launcher runs the stage's script).
LOCKED_IN_RUN = ("base", "preprocess", "quantize", "evaluate")


def run(main: Callable[[], object]) -> None:
    """Run a stage's `main`; a user error prints one clear line and exits with status 2.

    params.yaml must be the same when an output is replaced and at the end as at the start: if it was
    rewritten meanwhile (by `make params` or a `dvc exp run`), the stage fails before it replaces any more
    outputs (lmforge.artifacts asks the guard before every rename), so DVC records no parameters in dvc.lock
    that the outputs were not made with, and the next `dvc repro` runs the stage again.
    """
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = Path(sys.argv[0]).stem
    before = _params_digest()

    def params_unchanged(replacing: Path | None = None) -> None:
        if _params_digest() != before:
            kept = f"{replacing} not replaced (its previous version kept); " if replacing is not None else ""
            raise LmforgeError(f"{PARAMS_FILE} was rewritten while the {stage} stage ran (by `make params` or "
                               f"`dvc exp run`?): {kept}outputs made with the old parameters must not be recorded "
                               "by DVC; run `dvc repro` again")

    lock = None
    try:
        lock = lock_stage(stage) if stage in LOCKED_IN_RUN and is_main_process() else None
        with guard_replacements(params_unchanged):
            main()
            params_unchanged()
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if lock is not None:
            release_stage(lock)


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


def is_main_process() -> bool:
    """True in a plain `python` run and in rank 0 of a `torchrun` / `accelerate launch` run."""
    return int(os.environ.get("RANK", "0")) == 0


def finite_metrics(value: Any, key: str = "", bad: list[str] | None = None) -> tuple[Any, list[str]]:
    """`value` with every NaN / infinity replaced by None, and the dotted keys where that happened."""
    bad = [] if bad is None else bad
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(key)
        return None, bad
    if isinstance(value, dict):
        return {k: finite_metrics(v, f"{key}.{k}" if key else str(k), bad)[0] for k, v in value.items()}, bad
    if isinstance(value, (list, tuple)):
        return [finite_metrics(v, f"{key}[{i}]", bad)[0] for i, v in enumerate(value)], bad
    return value, bad


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write a stage's metrics JSON once: every rank of a distributed run computes them, rank 0 writes.

    Strict JSON: a NaN or an infinity becomes null, and `non_finite` lists where (bare NaN breaks parsers).
    """
    if not is_main_process():
        return
    clean, bad = finite_metrics(metrics)
    if bad:
        clean["non_finite"] = bad
        log.warning("%s: non-finite values written as null: %s", path, ", ".join(bad))
    write_json(path, clean)
    log.info("wrote %s", path)
