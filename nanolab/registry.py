"""The component registry: every swappable piece is registered by kind and name.

    @registry.register("norm", "rmsnorm", "RMSNorm (Zhang & Sennrich, 2019)")
    class RMSNorm(nn.Module): ...

    registry.get("norm", "rmsnorm")      # -> the class
    registry.available("norm")           # -> ["layernorm", "rmsnorm"]
    registry.names("norm")               # the same names without importing the components (no torch)
    registry.construct("norm", "rmsnorm", {"n_embd": 128, "bias": False, ...})   # -> an instance

A config is validated with `names`, which reads the static table `BUILTIN_NAMES` (checked against the real
registrations by the tests) instead of importing the built-in modules, so loading a spec does not import torch.

Third-party packages add components without a fork: declare an entry point in the group
`nanolab.components` whose target is a module (or any object) that registers on import, e.g.

    [project.entry-points."nanolab.components"]
    my_attention = "my_pkg.attention"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from nanolab.errors import NanolabError

ENTRY_POINT_GROUP = "nanolab.components"
BUILTIN_MODULES = ("nanolab.components", "nanolab.data")
BUILTIN_NAMES: dict[str, tuple[str, ...]] = {  # what BUILTIN_MODULES register, known without importing them
    "activation": ("geglu", "gelu", "relu", "relu2", "swiglu"),
    "attention": ("naive", "sdpa"),
    "dataset": ("shakespeare_char",),
    "norm": ("layernorm", "rmsnorm"),
    "optimizer": ("adamw", "muon"),
    "position": ("alibi", "learned", "none", "rotary", "sinusoidal"),
    "schedule": ("constant", "cosine", "linear", "wsd"),
    "tokenizer": ("bpe", "char", "ids"),
}


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
_loaded = False  # the built-in modules and the plugins are imported
_plugins_loaded = False  # the plugins are imported (`names` needs them, not the built-ins)


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
    global _loaded, _plugins_loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _plugins_loaded = False
    _load_plugins()


def _load_plugins() -> None:
    """Import every installed plugin (entry point group `nanolab.components`), once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
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


def names(kind: str) -> list[str]:
    """The names of `kind`, sorted, without importing the built-in components: the static built-in names,
    the plugins' and any registered so far (a plugin is imported, and imports what it needs)."""
    _load_plugins()
    return sorted({*BUILTIN_NAMES.get(kind, ()), *_entries.get(kind, {})})


def entries(kind: str) -> list[Entry]:
    _ensure_loaded()
    return [_entries[kind][n] for n in available(kind)]


def unknown_message(kind: str, name: Any) -> str:
    """'unknown attention 'sdpaa'; available: naive, sdpa (did you mean 'sdpa'?)'"""
    choices = names(kind)
    if not choices:
        return f"unknown component kind {kind!r}; kinds: {', '.join(sorted({*BUILTIN_NAMES, *_entries}))}"
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


def construct(kind: str, name: str, args: Mapping[str, Any]) -> Any:
    """Component `name` of `kind` constructed with the entries of `args` that its constructor names.

    Every named parameter of the constructor must be a key of `args`: one that matches nothing (a typo, or an
    argument the model does not provide) is an error, never silently left at its default.
    """
    obj = get(kind, name)
    params = [p for p in inspect.signature(obj).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unmatched = [p.name for p in params if p.name not in args]
    if unmatched:
        raise NanolabError(
            f"{kind} {name!r} ({getattr(obj, '__qualname__', obj)}): constructor parameter(s) "
            f"{', '.join(unmatched)} match no component argument; a component receives only: {', '.join(args)}")
    return obj(**{p.name: args[p.name] for p in params})
