"""The common frame of every stage entrypoint: logging, and clean exits on user errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.artifacts import write_json
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def run(main: Callable[[], object]) -> None:
    """Run a stage's `main`; a user error prints one clear line and exits with status 2."""
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def is_main_process() -> bool:
    """True in a plain `python` run and in rank 0 of a `torchrun` / `accelerate launch` run."""
    return int(os.environ.get("RANK", "0")) == 0


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write a stage's metrics JSON once: every rank of a distributed run computes them, rank 0 writes."""
    if is_main_process():
        write_json(path, metrics)
        log.info("wrote %s", path)
