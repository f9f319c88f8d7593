"""Issue #28: bad input on every surface is one line and exit 2 (or a bounded answer), never a traceback, a
memory or time bomb, or a silent accept; what a failed run leaves on disk is what its summary says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanolab import load_spec, run

TINY = """\
name: %(name)s
seed: 7
data: {block_size: 16}
model: {n_layer: 1, n_head: 2, n_embd: 16}
train: {batch_size: 4, max_iters: 10, warmup_iters: 0, eval_interval: 10, eval_iters: 1, log_interval: 5,
        sample_tokens: 0}
tracking: {wandb: {mode: disabled}}
"""


def cli(*args, runs: Path | None = None, timeout=120, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"NANOLAB_RUNS": str(runs)} if runs else {}), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nanolab", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip().removeprefix("nanolab: error: ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run folder (10 steps, one evaluation, best and last checkpoints)."""
    folder = tmp_path_factory.mktemp("trained")
    path = folder / "tiny.yaml"
    path.write_text(TINY % {"name": "tiny"})
    return Path(run(load_spec(path)).run_dir)


# --------------------------------------------------------------------------- a value too large to print


def test_a_yaml_alias_bomb_is_named_in_a_short_line(tmp_path):
    levels = ["    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"    - &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\ntracking:\n  tags:\n" + "\n".join(levels) + "\n")
    message = one_error_line(cli("run", path, "--print-config", timeout=60))
    assert message.endswith(": expected a list of strings") and len(message) < 400 + len(str(path))
    assert message.startswith(f"{path}: tracking.tags = [['lol', 'lol', 'lol', 'lol', ...], [[...], ")
