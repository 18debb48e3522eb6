"""The common frame of every stage entrypoint: logging, and clean exits on user errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

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
