"""Writing outputs so that an interrupted stage never leaves a half-written artifact in place.

Everything is written to a temporary sibling and renamed into place: `os.replace` of a file is
atomic; a directory is swapped in with two renames, the old one removed only after the new one is
complete. A temporary folder's name records its writer's pid (`.<name>.tmp-<pid>-...`), so the next run of
the stage knows a leftover of a killed run (lmforge.locks.sweep_leftovers).

Before any rename, the guards of `guard_replacements` run (lmforge.stage.run checks that params.yaml is
unchanged): a guard that raises leaves the previous output in place and discards the new one.

A write that fails for lack of space or permission, or on a read-only file system, raises `OutputError`:
one line naming the path and the cause, and saying that nothing was replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: read once, at import, and put it back
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create private (0600 / 0700) entries; outputs get the modes open() and mkdir() give
UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


_GUARDS: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def guard_replacements(check: Callable[[Path], None]) -> Iterator[None]:
    """Call `check(path)` before every output of this module replaces `path`, while the block runs; an
    exception from it stops the replacement (the new output is discarded, the previous one kept)."""
    _GUARDS.append(check)
    try:
        yield
    finally:
        _GUARDS.remove(check)


def _before_replacing(path: Path) -> None:
    for check in list(_GUARDS):
        check(path)


class OutputError(LmforgeError):
    """An output could not be written: a read-only file system or folder, a full disk, no permission."""


CAUSES = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk (no space left)",
          errno.EDQUOT: "is over its disk quota", errno.EACCES: "is not writable (permission denied)",
          errno.EPERM: "is not writable (operation not permitted)"}
WRITE_ONLY = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)  # a read never fails so: whatever the file, it was a write
# how libraries that wrap the OSError (safetensors' SafetensorError) spell the write-only causes
WRAPPED = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
           errno.EDQUOT: "Disk quota exceeded"}


@contextlib.contextmanager
def explain_write_errors(path: str | Path) -> Iterator[None]:
    """An OSError that the user must fix (read-only file system, full disk, quota; no permission to write
    next to `path`), also when a library wraps it, as one line: the path, the cause, and that nothing was
    replaced."""
    path = Path(path)
    kept = f"nothing was replaced ({path} is as it was)" if path.exists() else f"nothing was written to {path}"
    try:
        yield
    except OutputError:  # already explained (a nested write)
        raise
    except OSError as exc:
        where = Path(exc.filename) if isinstance(exc.filename, (str, Path)) else path
        writing_here = where.resolve().parent == path.resolve().parent or path.resolve().parent in \
            where.resolve().parents
        if exc.errno not in WRITE_ONLY and not (exc.errno in CAUSES and writing_here):
            raise
        raise OutputError(f"cannot write {path}: {where} {CAUSES[exc.errno]}; {kept}") from None
    except Exception as exc:  # noqa: BLE001 - only the causes above are translated, everything else re-raised
        cause = next((code for code, text in WRAPPED.items() if text in str(exc)), None)
        if cause is None:
            raise
        raise OutputError(f"cannot write {path}: it {CAUSES[cause]} ({type(exc).__name__}); {kept}") from None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    with explain_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
        tmp.chmod(DIR_MODE)  # mkdtemp makes it private; an artifact is as readable as any other output
        try:
            yield tmp
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def follow_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the mode open() and mkdir() give under the umask: some writers
    create private files (safetensors writes model.safetensors 0600) that other users of a shared model folder
    could not read."""
    for entry in folder.rglob("*"):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            entry.chmod(DIR_MODE)
        elif not entry.stat().st_mode & 0o111:  # an executable keeps its x bits
            entry.chmod(FILE_MODE)


def replace_dir(complete: str | Path, path: str | Path) -> None:
    """Swap the complete directory `complete` in at `path`; the old one is removed only afterwards. A guard
    (`guard_replacements`) that refuses leaves `path` as it was and removes `complete`."""
    complete, path = Path(complete), Path(path)
    try:
        _before_replacing(path)
    except BaseException:
        shutil.rmtree(complete, ignore_errors=True)
        raise
    with explain_write_errors(path):
        follow_umask(complete)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(complete, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with explain_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it private
        try:
            yield Path(tmp)
            _before_replacing(path)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def finite(value: Any, key: str = "", bad: list[str] | None = None) -> tuple[Any, list[str]]:
    """`value` with every NaN / infinity replaced by None, and the dotted keys where that happened."""
    bad = [] if bad is None else bad
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(key)
        return None, bad
    if isinstance(value, dict):
        return {k: finite(v, f"{key}.{k}" if key else str(k), bad)[0] for k, v in value.items()}, bad
    if isinstance(value, (list, tuple)):
        return [finite(v, f"{key}[{i}]", bad)[0] for i, v in enumerate(value)], bad
    return value, bad


def write_json(path: str | Path, data: Any, *, list_non_finite: str | None = None) -> list[str]:
    """The one JSON writer, strict JSON (bare NaN breaks parsers): a NaN or an infinity is written as null,
    and the dotted keys where that happened are returned, and also written under the key `list_non_finite`
    of a dict when one is given (stage metrics: "non_finite"). Atomic, as every artifact."""
    clean, bad = finite(data)
    if bad and list_non_finite is not None:
        clean[list_non_finite] = bad
    write_text(path, json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return bad


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dir_bytes(path: str | Path, suffixes: tuple[str, ...] = (".safetensors",)) -> int:
    """Bytes of the weight files under `path` (what a model costs on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.suffix in suffixes)
