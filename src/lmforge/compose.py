"""Compose params.yaml from conf/ exactly as `dvc exp run` does (DVC's own Hydra composition).

    python -m lmforge.compose [OVERRIDE ...]      # e.g. profile=tiny prune.amount=0.7
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path("conf")


def compose(output: str | Path = "params.yaml", overrides: list[str] | None = None,
            conf_dir: str | Path = CONF_DIR) -> None:
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(str(output), str(Path(conf_dir).resolve()), None, "config", "", list(overrides or []))


if __name__ == "__main__":
    compose(overrides=sys.argv[1:])
    print(f"params.yaml composed from {CONF_DIR}/" + (f" with {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""))
