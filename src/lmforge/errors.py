"""Errors that stop a stage with a message for the user rather than a traceback."""

from pathlib import Path

from lmforge.paths import producer_of


class LmforgeError(Exception):
    """Base class: the stage prints the message and exits with status 2."""


class ConfigError(LmforgeError):
    """A parameter is unknown, of the wrong type or out of range."""


class DataError(LmforgeError):
    """An input file is missing or unreadable, or its content cannot be used."""


def rerun_hint(path: str | Path) -> str:
    """What remakes `path`: the DVC stage that writes it (paths.PRODUCED_BY)."""
    stage = producer_of(path)
    return f"run `dvc repro {stage}`" if stage else "rerun the stage that writes it"


def missing_input(path: str | Path, problem: str = "not found") -> DataError:
    """The one message for an input that a stage needs and cannot use: the file, what is wrong with it,
    and the command that makes it again."""
    return DataError(f"{path}: {problem} ({rerun_hint(path)})")


def require(path: str | Path) -> Path:
    """`path`, after checking it exists: a stage fails before any work, naming the input and its stage."""
    if not Path(path).exists():
        raise missing_input(path)
    return Path(path)
