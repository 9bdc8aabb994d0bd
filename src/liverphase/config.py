"""Dataclass configs: YAML (or dict) in, validated; YAML (or dict) out."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from liverphase.errors import ConfigError

C = TypeVar("C", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base for configs: `from_dict` rejects unknown keys and wrong types; `validate` checks values."""

    def validate(self) -> None:
        """Check value ranges; subclasses raise ConfigError naming the field."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples as lists), suitable for JSON and YAML."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, source: str = "config") -> C:
        """Build from a dict, converting lists to tuples and nested dicts to nested configs."""
        kwargs = cls.coerce_fields(data, source)
        try:
            obj = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(str(exc), source) from None
        obj.validate()
        return obj

    @classmethod
    def coerce_fields(cls, data: dict[str, Any] | None, source: str = "config") -> dict[str, Any]:
        """The given fields' values converted to their types (an unknown key or a wrong type
        raises ConfigError naming `source`); ranges are left to `validate`, on the whole config."""
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} for {cls.__name__}", source)
        return {k: _coerce(v, hints[k], f"{source}:{k}") for k, v in data.items()}

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """Load from a YAML file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("file not found", path) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}".splitlines()[0], path) from None
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping at the top level", path)
        return cls.from_dict(data, source=str(path))

    def to_yaml(self) -> str:
        """Serialise to YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed."""
        obj = dataclasses.replace(self, **changes)
        obj.validate()
        return obj


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"invalid value {value!r}", where)
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", where)
        return hint.from_dict(value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {value!r}", where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"expected {len(args)} values, got {len(value)}", where)
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {value!r}", where)
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", where)
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {value!r}", where)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", where)
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", where)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", where)
        return value
    return value
