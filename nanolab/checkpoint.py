"""Checkpoints and the run folder's own files (config.yaml, meta.json).

A checkpoint holds only tensors and plain containers, so it loads with `torch.load(weights_only=True)`.
Every file is written to a temporary name in the same folder and renamed: a crash (or a second signal)
mid-write leaves the previous file whole.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from nanolab.errors import NanolabError

PACKAGES = ("nanolab", "torch", "wandb", "optuna", "pandas", "numpy", "pyyaml")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NanolabError(f"{path}: cannot read ({exc})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise NanolabError(f"{path}: no checkpoint there")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file; never retried with weights_only=False
        raise NanolabError(f"{path}: not a loadable nanolab checkpoint ({type(exc).__name__}: {exc})") from None


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state() -> dict:
    """The git commit of the nanolab code that runs and the diff of its uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    commit = _git("rev-parse", "HEAD", cwd=root)
    if commit is None:
        return {"commit": None, "note": f"{root} is not a git checkout"}
    diff = _git("diff", "HEAD", cwd=root) or ""
    return {"commit": commit.strip(), "dirty": bool(diff), "diff": diff}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "git": code_state(),
        "versions": versions(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "command": sys.argv,
    }
