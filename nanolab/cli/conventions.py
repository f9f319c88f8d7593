"""What every verb shares, as litgpt, Hydra and W&B users expect it: spec keys as dotted flags (`--train.lr 3e-3`
is `--set train.lr=3e-3`), -q / -v, `--json` output, `nanolab keys` and shell completion from the parser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from nanolab.config import Config
from nanolab.config_dicts import spec_fields
from nanolab.progress import QUIET_ENV

SECTIONS = tuple(name for name in spec_fields(Config))  # data, model, ... and the top-level keys (name, seed)
DOTTED_HELP = ("spec keys as flags: --KEY VALUE or --KEY=VALUE is --set KEY=VALUE (e.g. --train.lr 3e-3 "
               "--model.position rotary), checked the same way; `nanolab keys` lists them")


def expand_dotted_flags(argv: list[str]) -> list[str]:
    """`--train.lr 3e-3` and `--train.lr=3e-3` -> `--set train.lr=3e-3`; every other word as it was."""
    out, words = [], iter(argv)
    for word in words:
        name, eq, value = word[2:].partition("=")
        if word.startswith("--") and "." in name and name.split(".")[0] in SECTIONS:
            if not eq:
                value = next(words, "")
            out += ["--set", f"{name}={value}"]
        elif word == "--":
            out += [word, *words]
        else:
            out.append(word)
    return out


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """-q / -v on every verb (added once, after the verbs are built, so a new verb gets them too)."""
    group = parser.add_argument_group("output")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step lines; results and "
                       "errors still print")
    group.add_argument("-v", "--verbose", action="store_true", help="an error prints its traceback after its line")


def apply_common_flags(args: argparse.Namespace) -> None:
    if args.quiet:
        os.environ[QUIET_ENV] = "1"


def as_json(value) -> str:
    """--json output: one JSON document, keys in the order given."""
    return json.dumps(value, indent=2, default=str)


def cmd_keys(args) -> int:
    from nanolab.reference import keys_matching, keys_text

    if args.json:
        print(as_json([dataclasses.asdict(row) for row in keys_matching(args.prefix or "")]))
    else:
        print(keys_text(args.prefix or ""))
    return 0


def cmd_completion(args) -> int:
    import shtab

    from nanolab.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def add_verbs(sub) -> None:
    p = sub.add_parser("keys", help="list the spec keys: type, default, meaning",
                       description="Print every spec key a spec file, --set or a dotted flag may set, with its type, "
                       "default and meaning (the docs site's spec reference is the same list).")
    p.add_argument("prefix", nargs="?", metavar="PREFIX", help="only the keys under it: model, train.lr, "
                   "tracking.wandb")
    p.add_argument("--json", action="store_true", help="a JSON list of {key, type, default, doc}")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print the completion script for bash or zsh, generated from the parser: "
                       'eval "$(nanolab completion bash)" in ~/.bashrc, or nanolab completion zsh > '
                       "~/.zfunc/_nanolab.")
    p.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")
    p.set_defaults(func=cmd_completion)
