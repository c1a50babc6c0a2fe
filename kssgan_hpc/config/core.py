"""Dataclass configs: defaults < YAML file < `key=value` overrides, every key and type checked."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kssgan_hpc.errors import InputError

T = TypeVar("T")

SCENARIO_SECTIONS = ("prep", "siamese", "cluster", "gan", "anonymize", "evaluate", "withdraw", "slurm")
"""The top-level sections a scenario file may hold (one per stage, and the Slurm resources)."""


class ConfigError(InputError):
    """A config file or override is wrong; the message names the source, the key and the fix."""


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    section: str | None = None,
) -> T:
    """Build `cls` from its defaults, then the YAML at `path` (its `section` if given), then overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path), section)
    origin = str(path) if path is not None else "defaults"
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(values, key, value)
    if overrides:
        origin = f"{origin} + overrides"
    return from_dict(cls, values, origin)


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3); the value is parsed as YAML so numbers, bools and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. resolution=128)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_dict(cls: type[T], values: dict[str, Any], origin: str = "config") -> T:
    """Construct the dataclass `cls` from nested dicts, rejecting unknown keys and wrong types."""
    return _build(cls, values, origin, prefix="")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON serialisable)."""
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _read_yaml(path: Path, section: str | None) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    if section is not None:
        # A misspelt section would otherwise be skipped and the stage run on its defaults.
        for name in data:
            if name not in SCENARIO_SECTIONS:
                near = difflib.get_close_matches(str(name), SCENARIO_SECTIONS, n=1)
                raise ConfigError(f"{path}: unknown section '{name}'"
                                  + (f" (did you mean '{near[0]}'?)" if near else "")
                                  + f"; a scenario's sections are {', '.join(SCENARIO_SECTIONS)}")
        data = data.get(section, {}) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping")
    return data


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{part}' is a value, not a section")
    node[parts[-1]] = value


def _build(cls: type, values: dict[str, Any], origin: str, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.')}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key '{prefix}{unknown[0]}'; valid keys: "
            + ", ".join(prefix + name for name in fields)
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, origin, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None


def _coerce(hint: Any, value: Any, origin: str, key: str) -> Any:
    """Check `value` against the annotation `hint`; convert only where lossless (int -> float, list -> tuple)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, origin, key + ".")
    org = typing.get_origin(hint)
    args = typing.get_args(hint)
    if org in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, origin, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{origin}: {key}: bad value {value!r}")
    if org is typing.Literal:
        if value not in args:
            raise ConfigError(f"{origin}: {key}={value!r} is invalid; use one of {', '.join(map(repr, args))}")
        return value
    if org is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a mapping, got {value!r}")
        inner = args[1] if args else Any
        return {str(k): _coerce(inner, v, origin, f"{key}.{k}") for k, v in value.items()}
    if org in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{origin}: {key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, origin, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if org is tuple else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e30 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{origin}: {key}={value} is invalid; use a finite number")
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{origin}: {key} must be true or false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(
            f"{origin}: {key} must be {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value
