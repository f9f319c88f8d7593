"""The docs site: it builds strictly, and its reference pages are the code's own (config fields, registry, parser)."""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanolab import config_dicts, reference, registry
from nanolab.cli import build_parser
from nanolab.config import Config, key
from nanolab.errors import NanolabError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr
    return out


def page(site: Path, name: str) -> str:
    return (site / "reference" / name / "index.html").read_text()


def test_every_spec_key_is_in_the_built_reference(site):
    html = page(site, "keys")
    missing = [k.key for k in config_dicts.key_docs() if f"<code>{k.key}</code>" not in html]
    assert missing == [] and len(config_dicts.key_docs()) > 50


def test_every_component_is_in_the_built_reference(site):
    html = page(site, "components")
    assert [(kind, name) for kind in registry.kinds() for name in registry.available(kind)
            if f"<code>{name}</code>" not in html] == []


def test_every_command_is_in_the_built_reference(site):
    html = page(site, "cli")
    commands = reference._subcommands(build_parser())
    assert len(commands) >= 10 and [c for c in commands if f"nanolab {c}</h2>" not in html] == []


def test_a_new_field_shows_in_nanolab_keys_and_in_the_reference(monkeypatch):
    """The field's doc is written once, on the field: both views read it."""
    extended = dataclasses.make_dataclass(
        "Config", [("probe", int, key(7, "a probe key, documented once"))], bases=(Config,), frozen=True)
    monkeypatch.setattr(config_dicts, "Config", extended)
    listed = reference.keys_text("probe")
    assert listed.split() == ["probe", "int", "7", "a", "probe", "key,", "documented", "once"]
    assert "| `probe` | int | `7` | a probe key, documented once |" in reference.keys_markdown()


def test_keys_under_a_prefix_are_that_section_only():
    listed = [line.split()[0] for line in reference.keys_text("train.lr").splitlines()]
    assert listed == ["train.lr"]
    model = [line.split()[0] for line in reference.keys_text("model").splitlines()]
    assert model[0] == "model.n_layer" and all(k.startswith("model.") for k in model)
    assert reference.keys_text("tracking.wandb").splitlines()[0].startswith("tracking.wandb.project ")


def test_an_unknown_prefix_is_one_line_with_the_closest_key():
    with pytest.raises(NanolabError, match=r"^no spec key is 'train.lrr' or under it \(did you mean train.lr\?\)$"):
        reference.keys_text("train.lrr")


def runnable_blocks() -> list[tuple[str, str, str]]:
    """(page, command, expected output) for every `$ ` line of a console block marked runnable in docs/."""
    out = []
    for path in sorted((REPO / "docs").glob("*.md")):
        for block in re.findall(r"<!-- runnable[^>]*-->\n```console\n(.*?)```", path.read_text(), re.S):
            for command, expected in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", block, re.M):
                out.append((path.name, command, expected))
    return out


@pytest.mark.parametrize("page, command, expected", runnable_blocks())
def test_the_docs_runnable_examples_print_what_they_show(page, command, expected):
    argv = shlex.split(command)
    assert argv[0] == "nanolab"
    done = subprocess.run([sys.executable, "-m", "nanolab", *argv[1:]], cwd=REPO, capture_output=True, text=True)
    assert done.stdout + done.stderr == expected


def test_some_docs_examples_are_runnable():
    assert len(runnable_blocks()) >= 3
