"""Loading params.yaml and checking it against the schema: a small type checker for the dataclasses of
lmforge.config.schema (Union, list, nested dataclass, bool, int, float, str, bounds and choices).

Each stage reads only the sections it needs, but `stage_params` validates the whole file first: an unknown
key, a missing key, a value of the wrong type or out of range, or a broken rule (lmforge.config.rules) stops
the stage with one message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from lmforge.config.launcher import check_launcher
from lmforge.config.rules import check_across_sections
from lmforge.config.schema import PARAMS_FILE, SECTIONS, TOP_LEVEL_KEYS, Params
from lmforge.errors import ConfigError

T = TypeVar("T")


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (compose it from conf/ with `make params`)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # noqa: BLE001 - any YAML/interpolation failure is a config error
        raise ConfigError(f"{path}: cannot be read as YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def stage_params(*sections: str, path: str | Path = PARAMS_FILE) -> Params:
    """The validated `sections` of params.yaml (and the top-level keys); the other sections are None.

    The whole file is validated, not only `sections`: a stage refuses to run on parameters that the
    validate stage (the first of dvc.yaml) would refuse, whichever way it was started.
    """
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown params.yaml section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    params = validate_params(load_params(path), path)
    return dataclasses.replace(params, **{name: None for name in SECTIONS if name not in sections})


def validate_params(raw: Mapping[str, Any], source: str | Path = PARAMS_FILE) -> Params:
    """Every section of `raw` (iterating SECTIONS), the top-level keys, then the checks across sections.

    The first problem raises a ConfigError whose message names the key, the value and what is allowed.
    """
    allowed = [*TOP_LEVEL_KEYS, *SECTIONS]
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise ConfigError(unknown_key_message(source, str(unknown[0]), "", allowed))
    for name in allowed:
        if name not in raw:
            raise ConfigError(f"{source}: missing " + (f"section '{name}'" if name in SECTIONS else f"key '{name}'"))
    params = Params(
        seed=_check_value(raw["seed"], int, "seed", {}, source),
        launcher=check_launcher(raw["launcher"], source),
        **{name: parse_section(raw[name], schema, name, source) for name, schema in SECTIONS.items()},
    )
    check_across_sections(params, source)
    return params


def unknown_key_message(source: str | Path, key: str, section: str, allowed: list[str]) -> str:
    """One line: the unknown key, the nearest valid keys (difflib) and every allowed one."""
    prefix = f"{section}." if section else ""
    nearest = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
    hint = f" (nearest valid: {', '.join(prefix + k for k in nearest)})" if nearest else ""
    where = f"in '{section}'" if section else "at the top level"
    return f"{source}: unknown key '{prefix}{key}'{hint}. Allowed keys {where}: {', '.join(allowed)}"


def parse_section(raw: Any, schema: type[T], key: str, source: str | Path = PARAMS_FILE) -> T:
    """Check `raw` against the dataclass `schema` and build it; `key` is the dotted path for messages."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: '{key}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(unknown_key_message(source, str(unknown[0]), key, list(fields)))
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"{source}: missing key '{key}.{missing[0]}'")
    hints = typing.get_type_hints(schema)
    values = {
        name: _check_value(raw[name], hints[name], f"{key}.{name}", f.metadata, source)
        for name, f in fields.items()
    }
    return schema(**values)


def _check_value(value: Any, hint: Any, key: str, meta: Mapping, source: str | Path) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: invalid value for '{key}': {value!r} (expected {expected})")

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, options[0], key, meta, source)
    if dataclasses.is_dataclass(hint):
        return parse_section(value, hint, key, source)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise fail(f"a list of {item_type.__name__}")
        return [_check_value(v, item_type, f"{key}[{i}]", {}, source) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise fail("a string")
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {hint!r} for {key}")

    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise fail("one of " + ", ".join(map(str, choices)))
    bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    present = [(symbol, meta[name], ok) for name, symbol, ok in bounds if meta.get(name) is not None]
    if not all(ok(value, limit) for _, limit, ok in present):
        raise fail("a value " + " and ".join(f"{symbol} {limit}" for symbol, limit, _ in present))
    return value
