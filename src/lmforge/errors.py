"""Errors that stop a stage with a message for the user rather than a traceback."""


class LmforgeError(Exception):
    """Base class: the stage prints the message and exits with status 2."""


class ConfigError(LmforgeError):
    """A parameter is unknown, of the wrong type or out of range."""


class DataError(LmforgeError):
    """An input file is missing or unreadable, or its content cannot be used."""
