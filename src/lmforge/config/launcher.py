"""What `launcher` may be: dvc.yaml templates it into the training stages' shell `cmd`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.config.schema import PARAMS_FILE
from lmforge.errors import ConfigError

# dvc.yaml runs `${launcher} stages/<stage>.py` through a shell: only the documented forms, with options
# made of plain characters (no ;, |, &, $, quotes, redirections), may reach it; a bare word only right after
# an option (its value), never first.
_OPTION = r"--?[A-Za-z][\w-]*(?:=[\w./:,+@-]+| [\w./:,+@-]+)?"
_LAUNCHER = re.compile(rf"python|(?:torchrun|accelerate launch)(?: {_OPTION})*")


def check_launcher(value: Any, source: str | Path = PARAMS_FILE) -> str:
    if not isinstance(value, str) or not _LAUNCHER.fullmatch(value):
        raise ConfigError(f"{source}: invalid value for 'launcher': {value!r} (expected python, "
                          "torchrun [--option[=value] ...] or accelerate launch [--option[=value] ...], "
                          "single-spaced, options of letters, digits and . / : , + @ - _ only)")
    return value
