"""Dotted-key overrides for nested dataclasses: the one strict path every setting goes through.

``override(config, {"lora.rank": "4"})`` returns a copy with the value coerced to the declared
field type (``int | None``, ``list[str]``, ``dict``, ``bool`` from "true"/"false"). An unknown key
raises :class:`ConfigKeyError` listing the valid ones; a bad value raises ``ValueError`` naming
the key. Nothing here knows hyperray's settings; :mod:`hyperray.config` declares them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


class ConfigKeyError(KeyError):
    """A dotted key that names no setting."""

    def __str__(self) -> str:
        return str(self.args[0])


def valid_keys(config: Any) -> list[str]:
    """Every dotted key :func:`override` accepts for this config."""
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{k}" for k in valid_keys(value)]
        else:
            keys.append(f.name)
    return keys


def override(config: Any, updates: dict[str, Any], _prefix: str = "") -> Any:
    """A copy of ``config`` with dotted-key updates applied, coerced and validated."""
    grouped: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        head, _, rest = key.partition(".")
        current = getattr(config, head, _MISSING) if head in _field_names(config) else _MISSING
        nested = dataclasses.is_dataclass(current)
        if current is _MISSING or (rest and not nested):
            raise ConfigKeyError(
                f"unknown config key {_prefix + key!r}; valid keys: {', '.join(_prefix + k for k in valid_keys(config))}"
            )
        if rest:
            grouped.setdefault(head, {})[rest] = value
        elif nested:
            raise ConfigKeyError(
                f"config key {_prefix + key!r} is a section; set one of its fields"
            )
        else:
            changes[head] = _coerce(value, _field_type(config, head), _prefix + key)
    for head, sub in grouped.items():
        changes[head] = override(getattr(config, head), sub, f"{_prefix}{head}.")
    return dataclasses.replace(config, **changes)


_MISSING = object()


def _field_names(config: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def lookup(config: Any, key: str) -> Any:
    """The value at a dotted key: ``lookup(config, "lora.rank")``."""
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _field_type(config: Any, name: str) -> Any:
    return typing.get_type_hints(type(config))[name]


def _coerce(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, options[0], key)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"config key {key!r} expects a JSON object: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"config key {key!r} expects true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r} expects a number, got {value!r}")
        try:
            number = kind(value) if kind is float else int(str(value), 0)
        except (TypeError, ValueError):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"config key {key!r} expects {kind.__name__}, got {value!r}"
                ) from None
            if kind is int and not number.is_integer():
                raise ValueError(f"config key {key!r} expects an integer, got {value!r}") from None
            number = kind(number)
        return number
    if kind is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"config key {key!r} expects a string, got {value!r}")
        return str(value)
    return value
