"""A resumed run's W&B run: every step once and in order, although W&B refuses steps that go backwards and a
hard-killed session saved only part of what it logged.

Online, the run is rewound to the checkpoint where the server allows it, and the server says what it holds.
Offline, the earlier sessions' .wandb files say it, read with W&B's own reader in a subprocess. What W&B lacks
up to the checkpoint is then logged again from the run folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from nanolab.runfolder import RunFolder
from nanolab.tracking import note
from nanolab.tracking.sync import offline_run_dirs
from nanolab.tracking.wandb import WandbTracker


def rewind(init: Callable[..., Any], wandb_id: str, step: int) -> Any:
    """W&B run `wandb_id` online, rewound to `step`: W&B forgets what the killed session logged after the
    checkpoint. None where the server does not allow rewinding."""
    try:
        return init("online", id=wandb_id, resume_from=f"{wandb_id}?_step={step}")
    except Exception:  # noqa: BLE001 - the caller continues the run instead
        return None


def offline_held(root: Path, meta: Mapping, logged: int | None) -> int | None:
    """The last step the earlier offline sessions of W&B run meta['wandb_id'] saved; when they cannot be read
    (or were online), assume W&B holds all that earlier sessions logged: `logged`, the run folder's last step."""
    if meta.get("wandb_mode") in (None, "offline"):
        roots = {p.resolve() for p in (root, *([Path(meta["wandb_dir"])] if meta.get("wandb_dir") else []))}
        held = offline_last_step([d for r in roots for d in offline_run_dirs(r, meta["wandb_id"])])
        if held is not False:
            return held
    return logged


def offline_last_step(run_dirs: list[Path]) -> int | None | bool:
    """The last history step the offline W&B runs in `run_dirs` saved (None: no history), read with W&B's own
    reader (`wandb leet inspect`); False if they cannot be read.

    W&B writes its offline .wandb file in blocks, so a session killed hard saved less than it logged.
    """
    last = None
    for d in run_dirs:
        try:
            done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(d)],
                                  capture_output=True, text=True, timeout=120, check=True)
            step = json.loads(done.stdout).get("step")
        except (OSError, ValueError, AttributeError, subprocess.SubprocessError):
            return False
        if isinstance(step, int) and (last is None or step > last):
            last = step
    return last


def first_missing_step(run: Any, mode: str, wandb_id: str | None, held_offline: int | None) -> int:
    """The first step W&B run `run` lacks: 0 in a W&B run new to this run (`wandb_id` is the one it resumes);
    online, past what the server holds (after a rewind: the checkpoint's step); offline, past `held_offline`."""
    if run.id != wandb_id:
        return 0
    held = (int(run.step) - 1 if run.step else None) if mode == "online" else held_offline
    return 0 if held is None else held + 1


def backfill(tracker: WandbTracker, folder: RunFolder) -> None:
    """Log the run folder's rows and samples from `tracker.min_step` on, in step order: a killed session's W&B
    data is not all saved, and a resumed run may start a new W&B run. The folder is already cut back to the
    checkpoint."""
    missing = [(row["step"], 0, {k: v for k, v in row.items() if k != "step"}) for row in folder.metrics()
               if row["step"] >= tracker.min_step]
    missing += [(step, 1, text) for step, text in folder.samples() if step >= tracker.min_step and text]
    if not missing:
        return
    missing.sort(key=lambda record: record[:2])  # at a step, the metrics before the sample
    note(f"W&B run {tracker.run.id} lacked steps {missing[0][0]}..{missing[-1][0]} of this run (not saved by the "
         "interrupted session); logged them from metrics.jsonl")
    for step, kind, payload in missing:
        if kind == 0:
            tracker.log(payload, step)
        else:
            tracker.log_samples(step, payload)
