"""The common frame of every stage entrypoint: logging, clean exits on user errors, and the metrics writer."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.artifacts import write_json
from lmforge.config import PARAMS_FILE
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def _params_digest() -> str | None:
    try:
        return hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def run(main: Callable[[], object]) -> None:
    """Run a stage's `main`; a user error prints one clear line and exits with status 2.

    params.yaml must be the same at the end as at the start: if it was rewritten meanwhile (a `dvc exp run`
    refused by DVC's lock still recomposes it first), the stage fails, so DVC records no parameters in dvc.lock
    that the outputs were not made with, and the next `dvc repro` runs the stage again.
    """
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = Path(sys.argv[0]).stem
    before = _params_digest()
    try:
        main()
        if _params_digest() != before:
            raise LmforgeError(f"{PARAMS_FILE} was rewritten while the {stage} stage ran (by `make params` or "
                               "`dvc exp run`?): its outputs may not match it, so DVC must not record this run; "
                               "run `dvc repro` again")
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


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
