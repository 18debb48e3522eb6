"""Writing outputs so that an interrupted stage never leaves a half-written artifact in place.

Everything is written to a temporary sibling and renamed into place: `os.replace` of a file is
atomic; a directory is swapped in with two renames, the old one removed only after the new one is
complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: read once, at import, and put it back
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create private (0600 / 0700) entries; outputs get the modes open() and mkdir() give
UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(DIR_MODE)  # mkdtemp makes it private; an artifact is as readable as any other output
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(complete: str | Path, path: str | Path) -> None:
    """Swap the complete directory `complete` in at `path`; the old one is removed only afterwards."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(complete, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)  # mkstemp makes it private
    try:
        yield Path(tmp)
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
