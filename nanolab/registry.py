"""The component registry: every swappable piece is registered by kind and name.

    @registry.register("norm", "rmsnorm", "RMSNorm (Zhang & Sennrich, 2019)")
    class RMSNorm(nn.Module): ...

    registry.get("norm", "rmsnorm")      # -> the class
    registry.available("norm")           # -> ["layernorm", "rmsnorm"]

Third-party packages add components without a fork: declare an entry point in the group
`nanolab.components` whose target is a module (or any object) that registers on import, e.g.

    [project.entry-points."nanolab.components"]
    my_attention = "my_pkg.attention"
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from nanolab.errors import NanolabError

ENTRY_POINT_GROUP = "nanolab.components"
BUILTIN_MODULES = ("nanolab.components", "nanolab.data")


class UnknownComponentError(NanolabError, KeyError):
    """A lookup of a name that no component of that kind carries."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    description: str


_entries: dict[str, dict[str, Entry]] = {}
_loaded = False


def register(kind: str, name: str, description: str = "") -> Callable[[Any], Any]:
    """Decorator: register `obj` as component `name` of `kind`. The first docstring line is the default description."""

    def decorator(obj: Any) -> Any:
        kind_entries = _entries.setdefault(kind, {})
        if name in kind_entries and kind_entries[name].obj is not obj:
            raise NanolabError(f"{kind} {name!r} is registered twice ({kind_entries[name].obj!r} and {obj!r})")
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        kind_entries[name] = Entry(kind, name, obj, description or (doc[0] if doc else ""))
        return obj

    return decorator


def _ensure_loaded() -> None:
    """Import the built-in components and every installed plugin, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not hide the built-ins
            raise NanolabError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc


def closest(name: str, choices: list[str]) -> str | None:
    """The choice most like `name`, or None when nothing is close."""
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    return match[0] if match else None


def kinds() -> list[str]:
    _ensure_loaded()
    return sorted(_entries)


def available(kind: str) -> list[str]:
    """The names registered for `kind`, sorted."""
    _ensure_loaded()
    return sorted(_entries.get(kind, {}))


def entries(kind: str) -> list[Entry]:
    _ensure_loaded()
    return [_entries[kind][n] for n in available(kind)]


def unknown_message(kind: str, name: Any) -> str:
    """'unknown attention 'sdpaa'; available: naive, sdpa (did you mean 'sdpa'?)'"""
    choices = available(kind)
    if not choices:
        return f"unknown component kind {kind!r}; kinds: {', '.join(kinds())}"
    hint = closest(str(name), choices)
    suffix = f" (did you mean {hint!r}?)" if hint else ""
    return f"unknown {kind} {name!r}; available: {', '.join(choices)}{suffix}"


def get(kind: str, name: str) -> Any:
    """The object registered as `name` of `kind`; UnknownComponentError names the choices."""
    _ensure_loaded()
    try:
        return _entries[kind][name].obj
    except KeyError:
        raise UnknownComponentError(unknown_message(kind, name)) from None
