"""The reference pages, generated from the code: the spec keys from the config fields' own docs, the components from
the registry, the commands from the CLI's parser. `nanolab keys` prints the first; the docs site (mkdocs_hooks.py)
renders all three at build time, so none of them is ever copied by hand."""

from __future__ import annotations

import argparse
import json

from nanolab import registry
from nanolab.config_dicts import KeyDoc, key_docs
from nanolab.errors import NanolabError, shown


def shown_default(value) -> str:
    """A default as it would be written in a spec file (YAML/JSON scalars: null, true, [])."""
    return json.dumps(value)


def keys_matching(prefix: str = "") -> list[KeyDoc]:
    """The keys under a dotted prefix (`model`, `train.lr`); every key for ''."""
    return [k for k in key_docs() if not prefix or k.key == prefix or k.key.startswith(prefix.rstrip(".") + ".")]


def keys_text(prefix: str = "") -> str:
    """`nanolab keys`: one key a line, aligned."""
    rows = [(k.key, k.type, shown_default(k.default), k.doc) for k in keys_matching(prefix)]
    if not rows:
        hint = registry.closest(prefix, [k.key for k in key_docs()])
        raise NanolabError(f"no spec key is {shown(prefix)} or under it" + (f" (did you mean {hint}?)" if hint else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def keys_markdown() -> str:
    lines = ["# Spec keys", "", "Every key a spec file (or `--set`, or a dotted flag) may set, with its type, its "
             "default and what it means. Generated from the fields of `nanolab/config.py`; `nanolab keys [PREFIX]` "
             "prints the same list.", ""]
    section = None
    for k in key_docs():
        top = k.key.split(".")[0] if "." in k.key else "top level"
        if top != section:
            section = top
            lines += ["", f"## {section}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines.append(f"| `{k.key}` | {_cell(k.type)} | `{_cell(shown_default(k.default))}` | {_cell(k.doc)} |")
    return "\n".join(lines) + "\n"


def components_markdown() -> str:
    lines = ["# Components", "", "Every registered component, by kind: a spec names one with the kind's key "
             "(`model.activation: swiglu`). Generated from the registry; `nanolab components` prints the same."]
    for kind in registry.kinds():
        lines += ["", f"## {kind}", "", "| name | what it is |", "| --- | --- |"]
        lines += [f"| `{e.name}` | {_cell(e.description)} |" for e in registry.entries(kind)]
    return "\n".join(lines) + "\n"


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """Each command's `--help`, as the command prints it."""
    lines = ["# Command line", "", "Every command's `--help`, generated from the parser.", "", "```text",
             parser.format_help().rstrip(), "```"]
    for name, sub in _subcommands(parser).items():
        lines += ["", f"## nanolab {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # argparse has no public door
    return dict(action.choices)
