"""Configs <-> plain dicts, the one conversion: `from_dict` (checked, errors naming the source and the dotted key),
`to_dict`, `flatten`, `check_key` and `spec_fields`, beside the types of `nanolab.config`; and each spec key's
documentation as its field carries it (`key_docs`). The YAML module (`nanolab.spec`) only reads and writes files.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from nanolab.config import Config, ConfigError
from nanolab.errors import SHOWN_MAX, SpecError, shown
from nanolab.registry import closest


def spec_fields(cls: type) -> list[str]:
    """The keys a spec may set for `cls` (derived fields are not among them)."""
    return [f.name for f in dataclasses.fields(cls) if "derived" not in f.metadata]


@dataclass(frozen=True)
class KeyDoc:
    """One spec key as `nanolab keys` and the docs site show it."""
    key: str
    type: str
    default: Any
    doc: str


def key_docs(cls: type | None = None, prefix: str = "") -> list[KeyDoc]:
    """Every key a spec may set, depth first in declaration order, from the fields' own metadata."""
    cls, out = cls or Config, []
    for f in dataclasses.fields(cls):
        hint = _field_type(cls, f.name)
        if "derived" in f.metadata:
            continue
        if dataclasses.is_dataclass(hint):
            out += key_docs(hint, f"{prefix}{f.name}.")
            continue
        kind = f.metadata.get("kind")
        shown_type = f"{kind} name" if kind else _type_name(hint)
        out.append(KeyDoc(f"{prefix}{f.name}", shown_type, to_dict(cls())[f.name], f.metadata["doc"]))
    return out


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "list of str"
    return getattr(hint, "__name__", str(hint))


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _shown(key: Any) -> str:
    """A key as typed, or quoted (and cut) when it holds characters (newlines, controls) that would break the line
    or is too long for one."""
    text = str(key)
    return text if text.isprintable() and len(text) <= SHOWN_MAX else shown(text)


def _unknown_key(key: str, names: list[str]) -> str:
    hint = closest(key, names)
    return f"unknown key; accepted: {', '.join(names)}" + (f" (did you mean {shown(hint)}?)" if hint else "")


def check_key(cls: type, dotted: str, source: str) -> None:
    """A SpecError unless `dotted` names a declared field of `cls` (nested dataclasses followed)."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        names = spec_fields(cls)
        if part not in names:
            raise SpecError(f"{source}: {_shown(dotted)}: {_unknown_key(part, names)}")
        hint = _field_type(cls, part)
        cls = hint
        if i < len(parts) - 1 and not dataclasses.is_dataclass(hint):
            raise SpecError(f"{source}: {_shown(dotted)}: {'.'.join(parts[:i + 1])} is a value, not a section")


def from_dict(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `raw`, converting and checking every value; SpecError on the first problem."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: {prefix.rstrip('.') or '<top>'} = {shown(raw)}: expected a mapping of keys")
    derived = {f.name: f.metadata["derived"] for f in dataclasses.fields(cls) if "derived" in f.metadata}
    kwargs = {}
    for key, value in raw.items():
        if key in derived:
            raise SpecError(f"{source}: {prefix}{key}: derived from {derived[key]}; set that instead")
        if key not in spec_fields(cls):
            raise SpecError(f"{source}: {_shown(f'{prefix}{key}')}: {_unknown_key(str(key), spec_fields(cls))}")
        kwargs[key] = _convert(value, _field_type(cls, key), source, f"{prefix}{key}")
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{source}: {prefix}{f.name}: required")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise SpecError(f"{source}: {prefix}{exc}") from None


def _convert(value: Any, hint: Any, source: str, key: str) -> Any:
    def bad(accepted: str) -> SpecError:
        return SpecError(f"{source}: {key} = {shown(value)}: expected {accepted}")

    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, source, key + ".")
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # `X | None`
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, source, key)
    if hint is dict or typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return value
    if hint is list or typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise bad("a list")
        return value
    if typing.get_origin(hint) is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        return tuple(items)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            return float(value)
        except OverflowError:  # an int beyond float's range
            raise bad("a finite number") from None
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"unsupported config field type {shown(hint)} for {key}")


def to_dict(cfg: Any) -> dict:
    """A dataclass config as plain nested dicts (tuples as lists, derived fields left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if "derived" in f.metadata:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'n_layer': 4}} -> {'model.n_layer': 4}"""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
