"""Trackers: where a run's records go. The run folder always; Weights & Biases unless disabled.

The runner hands every metric, sample, checkpoint and summary to each tracker and never imports wandb: this
package is the only part of nanolab that does, lazily, so `mode: disabled` costs nothing. W&B never stops a
run: when it cannot start or raises, one note, and the run folder goes on.

    local.py          the run folder, through RunFolder
    wandb.py          the W&B logger: one W&B run, failure isolation
    wandb_open.py     modes, credentials, wandb.init and its fallbacks
    wandb_resume.py   what a resumed run's W&B run holds: rewind, offline files read back, backfill
    wandb_api.py      W&B's public API, for analysis
    sync.py           `nanolab sync`: upload offline W&B runs
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from nanolab.config import Config
from nanolab.runfolder import RunFolder


def note(message: str) -> None:
    """One line on stderr, the way nanolab reports what does not stop a run."""
    print(f"nanolab: {message}", file=sys.stderr, flush=True)


def one_line(exc: BaseException | None) -> str:
    """An error as the first line of a note; a settings error (pydantic's, W&B's Settings) with the fields it
    names, which its first line leaves out."""
    text = f"{type(exc).__name__}: {exc}".strip() if exc is not None else ""
    if not text:
        return "unknown error"
    first = text.splitlines()[0]
    if callable(getattr(exc, "errors", None)):
        try:
            fields = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        except (TypeError, KeyError):
            fields = []
        first = f"{first}: {'; '.join(fields)}" if fields else first
    return first[:300]


class Tracker:
    """Where a run's records go. Only `log` and `close` must be implemented; the rest default to no-ops."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_samples(self, step: int, text: str) -> None:
        """A generated sample, at each evaluation."""

    def log_checkpoint(self, path: Path, kind: str, step: int) -> None:
        """`kind` is "best" or "last"; called after the file is written."""

    def summary(self, values: dict) -> None:
        """Final and best figures (best/val_loss, best/val_ppl, best/step, wall_time, tokens_seen, ...)."""

    def close(self, status: str) -> None:
        raise NotImplementedError


# the trackers subclass Tracker and call note() and one_line(), defined above
from nanolab.tracking.local import LocalTracker  # noqa: E402
from nanolab.tracking.sync import find_offline_runs, sync_runs  # noqa: E402
from nanolab.tracking.wandb import WandbTracker  # noqa: E402
from nanolab.tracking.wandb_open import open_wandb, resolve_mode  # noqa: E402


def open_trackers(cfg: Config, folder: RunFolder | os.PathLike, meta: Mapping,
                  resume_step: int | None) -> tuple[list[Tracker], dict]:
    """The run folder tracker, then W&B unless its mode resolves to disabled.

    `meta` (run_id, name, group, job_type, params, ..., sweep/trial/trial_params, ablation/variant, and on
    resume the wandb_* fields an earlier session recorded) is read, never changed. Returns the trackers and
    the fields the caller must merge into meta.json (wandb_id, wandb_mode, wandb_dir, wandb_project and, online,
    wandb_url); empty when W&B is off. `resume_step`: None for a fresh run, else the checkpoint's step.
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    logged = None  # on resume, the highest step any earlier session logged
    if resume_step is not None:  # what a killed session wrote after the checkpoint goes, from both trackers
        _, logged = folder.truncate(resume_step)
    trackers: list[Tracker] = [LocalTracker(folder)]
    mode, auto_offline = resolve_mode(cfg)
    if mode == "disabled":
        return trackers, {}
    wb, fields = open_wandb(cfg, folder, meta, mode, auto_offline, resume_step, logged)
    if wb is not None:
        trackers.append(wb)
    return trackers, fields


def add_to_summary(cfg: Config, folder: RunFolder, figures: Mapping[str, float]) -> None:
    """Figures computed after a run (nanolab eval) into its W&B run's summary, in the mode it ran in (offline: with
    the files that `nanolab sync` uploads); nothing for a run without W&B, a note when W&B cannot be reached."""
    from nanolab.tracking.wandb_open import _import_wandb, _initializer

    meta = folder.read_meta()
    if not meta.get("wandb_id"):
        return
    wandb = _import_wandb(meta["wandb_mode"])
    if wandb is None:
        return
    try:
        run = _initializer(wandb, cfg, folder, meta, Path(meta["wandb_dir"]))(meta["wandb_mode"], id=meta["wandb_id"],
                                                                          resume="allow")
        run.summary.update(dict(figures))
        run.finish()
    except Exception as exc:  # noqa: BLE001 - the run folder already holds the figures
        note(f"W&B run {meta['wandb_id']} not updated ({one_line(exc)}); eval.jsonl in {folder.path} holds the figures")


__all__ = ["add_to_summary", "Tracker", "LocalTracker", "WandbTracker", "open_trackers", "resolve_mode", "find_offline_runs",
           "sync_runs", "note"]
