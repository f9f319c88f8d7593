"""What a run records about where it ran: the code (git commit and diff), package versions, device and host."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("nanolab", "torch", "wandb", "optuna", "pandas", "numpy", "pyyaml")


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
    """The Python version and the installed version of each package a run depends on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def environment(device: torch.device) -> dict:
    """meta.json's record of the code, the versions, the device, the threads, the host and the command."""
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
