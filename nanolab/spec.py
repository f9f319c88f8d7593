"""YAML specs -> typed `Config`: reading files, `extends`, `--set` overrides (`config_dicts.from_dict` converts).

Every error is a `SpecError` with one line naming the file, the dotted key, the bad value and what is
accepted. YAML is read with `SpecLoader` only: safe tags (no tag can build a Python object), no repeated keys.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from nanolab.config import Config
from nanolab.config_dicts import check_key, flatten, from_dict, to_dict
from nanolab.errors import SpecError, shown

OVERRIDE_SOURCE = "--set"


def load_spec(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a spec file (following `extends`; None: the defaults), apply `a.b=value` overrides and validate into a
    Config."""
    raw = read_yaml_chain(Path(path)) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text, Config)
        set_dotted(raw, key, value)
    return from_dict(Config, raw, str(path) if path is not None else "the defaults")


def spec_from_dict(raw: dict, source: str = "<dict>") -> Config:
    return from_dict(Config, raw, source)


# ----------------------------------------------------------------------------- reading YAML


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping."""


class SpecLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping, where PyYAML silently keeps the last."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may repeat: its keys are meant to be overridden
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error says so
            if first is not None:
                raise DuplicateKeyError(None, None, f"duplicate key {shown(key)} (lines {first} and {line})", None)
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: Exception) -> str:
    """What PyYAML found wrong, in one line."""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character  # a code point or bytes
        return f"character {shown(char)} not allowed in YAML (position {exc.position})"
    if isinstance(exc, DuplicateKeyError):
        return f"{problem}: write each key once"
    if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
        return f"YAML tag not allowed ({problem}); specs hold plain values only"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(f"malformed YAML{where}: {problem}".split())


def parse_yaml(text: str, source: str) -> Any:
    """YAML text as plain values (safe tags, no repeated keys), or a one-line SpecError that starts with `source`."""
    try:
        return yaml.load(text, Loader=SpecLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: e.g. the date 2024-13-45
        raise SpecError(f"{source}: {_yaml_problem(exc)}") from None


def _not_a_file(path: Path) -> str:
    return "is a directory; expected a YAML file" if path.is_dir() else "no such file"


def read_yaml(path: Path) -> dict:
    """One YAML file as a dict, or a SpecError that says what is wrong with it."""
    if not path.is_file():
        raise SpecError(f"{path}: {_not_a_file(path)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = parse_yaml(text, str(path))
    if data is None:  # an empty spec would train every default for 2,000 steps: surely not what was meant
        raise SpecError(f"{path}: the file is empty (or only comments); expected a mapping of keys")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def read_yaml_chain(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """`path` merged over the file its `extends:` names (relative to `path`), recursively, cycles refused."""
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise SpecError(f"{path}: extends cycle: {cycle}")
    data = read_yaml(path)
    _resolve_data_path(data, path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SpecError(f"{path}: extends = {shown(parent)}: expected the path of another spec file")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise SpecError(f"{path}: extends = {shown(parent)}: {_not_a_file(parent_path)} {parent_path}")
    return deep_merge(read_yaml_chain(parent_path, (*_chain, resolved)), data)


def _resolve_data_path(data: dict, path: Path) -> None:
    """`data.path` and `data.val_path` in a file are relative to that file."""
    section = data.get("data")
    for key in ("path", "val_path"):
        if isinstance(section, dict) and isinstance(section.get(key), str) and section[key]:
            section[key] = _resolve(path.parent, section[key], f"{path}: data.{key}")


def _resolve(base: Path, value: str, where: str) -> str:
    try:
        return str((base / value).resolve())
    except ValueError as exc:  # an embedded NUL
        raise SpecError(f"{where} = {shown(value)}: not a file path ({exc})") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str, cls: type = Config, source: str = OVERRIDE_SOURCE, relative_to: Path | None = None
                   ) -> tuple[str, Any]:
    """'train.lr=3e-3' -> ('train.lr', 0.003); the key must exist in `cls`; the value parses as YAML; a data path
    is made absolute from `relative_to` (default: the working directory)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"{source} {shown(text)}: expected KEY=VALUE, e.g. train.lr=3e-3")
    check_key(cls, key, source)
    # Text that is not YAML is an error, not a string: `tags=[a,b` must not become the tag '[a,b'
    value = parse_yaml(value_text, f"{source}: {key} = {shown(value_text)}") if value_text.strip() else ""
    if isinstance(value, str) and key.endswith(("data.path", "data.val_path")) and value:
        value = _resolve(relative_to or Path.cwd(), value, f"{source}: {key}")
    return key, value


def format_override(key: str, value: Any) -> str:
    """('train.lr', 0.001) -> 'train.lr=0.001', the inverse of `parse_override`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def parse_changes(changes: dict[str, Any], source: Path, where: str) -> dict[str, Any]:
    """Dotted key -> value as a plan file writes them, read as `--set` reads them; a data path relative to the file."""
    return dict(parse_override(format_override(key, value), Config, f"{source}: {where}", source.parent)
                for key, value in changes.items())


def normalize_overrides(value: Any, source: str, key: str = "overrides") -> tuple[str, ...]:
    """A plan file's `overrides:` as `key=value` strings: a list of such strings, or a mapping of dotted keys."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(format_override(k, v) for k, v in flatten(value).items())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SpecError(f"{source}: {key} = {shown(value)}: expected a list of KEY=VALUE strings or a mapping of dotted keys")


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = raw
    for part in path:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


# ----------------------------------------------------------------------------- Config -> YAML


def dump_spec(cfg: Config) -> str:
    """YAML text that `load_spec` reads back to an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
