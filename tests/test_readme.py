"""The README is the front door and docs/ the manual: their commands, code map and examples must stay true."""

import argparse
import re
import shlex
from pathlib import Path

import torch

from nanolab import build_model, registry
from nanolab.cli import build_parser
from nanolab.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def test_the_readme_is_short_and_its_links_exist():
    assert len(README.splitlines()) <= 250
    targets = [t for t in re.findall(r"\]\(([^)#]+)", README) if not t.startswith("http")]
    assert targets and [t for t in targets if not (REPO / t).exists()] == []


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(setup) == 2 and setup[0].endswith("nanolab run experiments/baseline.yaml")
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert shlex.split(ci) == shlex.split(setup[1])


def test_the_code_map_names_every_module_and_only_files_that_exist():
    code_map = README[README.index("## Code map"):]
    modules = [p for p in (REPO / "nanolab").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    unnamed = [str(p.relative_to(REPO)) for p in modules
               if str(p.relative_to(REPO)) not in code_map and f"`{p.name}`" not in code_map]
    assert unnamed == []
    named = re.findall(r"`(nanolab/[^`]*)`", code_map)
    assert named and [path for path in named if not (REPO / path).exists()] == []


def test_print_config_is_documented_for_the_verbs_that_take_it():
    commands = (DOCS / "commands.md").read_text()
    sentence = re.search(r"`--print-config` on (.*?) prints", commands, re.S).group(1)
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    takes_it = {verb for verb, parser in subparsers.choices.items() if "--print-config" in parser.format_help()}
    assert takes_it == set(re.findall(r"`(\w+)`", sentence)) == {"run", "sweep", "ablate"}


def test_the_component_example_works(monkeypatch):
    example = re.search(r"```python\n(from torch import nn\n.*?)```", (DOCS / "components.md").read_text(), re.S).group(1)
    registry.kinds()  # load the built-ins into the real registry before the example registers into a copy
    monkeypatch.setattr(registry, "_entries", {k: dict(v) for k, v in registry._entries.items()})
    exec(example, {})
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, activation="silu"), vocab_size=11, block_size=8)
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 11)
