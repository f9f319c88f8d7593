"""`nanolab sync`: upload a run folder's offline W&B runs by wrapping `wandb sync`.

Its own code is only what `wandb sync` cannot know: where a run folder keeps its W&B runs (also a WANDB_DIR
named in meta.json), and that it must not hang forever when a key is set but the server is out of reach.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder

SYNC_TIMEOUT = 300.0  # seconds for the whole upload; NANOLAB_SYNC_TIMEOUT changes it


def offline_run_dirs(root: Path, wandb_id: str) -> list[Path]:
    """W&B run `wandb_id`'s offline folders in `root/wandb`: `offline-run-<time>-<id>`, and `...-<id>-<n>` where
    wandb found that name taken (two sessions of the run started in the same second)."""
    name = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(wandb_id)}(-\d+)?")
    return sorted(d for d in Path(root).glob(f"wandb/offline-run-*-{wandb_id}*") if name.fullmatch(d.name))


def find_offline_runs(run_dir: str | os.PathLike) -> list[Path]:
    """The offline W&B run directories of a run folder, oldest first (a resumed run has one per session), as
    absolute paths, each once.

    Looks in `<run_dir>/wandb/` and, when the run used another W&B dir (WANDB_DIR, tracking.wandb.dir), for
    the run's `offline_run_dirs` in the `wandb_dir` that meta.json names.
    """
    folder = RunFolder(run_dir)
    found = set(folder.path.glob("wandb/offline-run-*"))
    try:
        meta = folder.read_meta() if folder.meta_path.is_file() else {}
    except NanolabError:
        meta = {}
    if meta.get("wandb_dir") and meta.get("wandb_id"):
        found.update(offline_run_dirs(Path(meta["wandb_dir"]), meta["wandb_id"]))
    unique = {p.resolve() for p in found if p.is_dir()}  # a relative folder and meta's absolute dir meet here
    return sorted(unique, key=lambda p: (p.name, str(p)))


def sync_timeout() -> float:
    value = os.environ.get("NANOLAB_SYNC_TIMEOUT", "").strip()
    if not value:
        return SYNC_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise NanolabError(f"NANOLAB_SYNC_TIMEOUT={value!r}: expected a number of seconds above 0")
    return seconds


def sync_runs(paths: list[str | os.PathLike]) -> None:
    """`nanolab sync RUN_FOLDER...`: upload the offline W&B runs of these run folders with `wandb sync`.

    The upload gets NANOLAB_SYNC_TIMEOUT seconds (default 300): past that, for instance with an API key but
    no network, `wandb sync` is stopped and the error says so; run it again later.
    """
    dirs: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise NanolabError(f"{path}: no such run folder")
        runs = find_offline_runs(path)
        if not runs:
            raise NanolabError(f"{path}: no offline W&B run in this folder (looked for wandb/offline-run-*); "
                               "only runs trained with W&B offline (tracking.wandb.mode offline, or auto without "
                               "an API key) need syncing")
        dirs.update(dict.fromkeys(runs))
    timeout = sync_timeout()
    cmd = [sys.executable, "-m", "wandb", "sync", *map(str, dirs)]
    try:
        done = subprocess.run(cmd, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NanolabError(f"wandb sync did not finish within {timeout:g} s (NANOLAB_SYNC_TIMEOUT) for {len(dirs)} "
                           "offline run(s); check the network and `wandb login`, then run `nanolab sync` "
                           "again") from None
    if done.returncode != 0:
        raise NanolabError(f"wandb sync failed (exit status {done.returncode}) for {len(dirs)} offline run(s); "
                           "check `wandb login` and the network, then run `nanolab sync` again")
