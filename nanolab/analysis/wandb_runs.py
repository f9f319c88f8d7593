"""W&B runs -> the same frames as `load_runs` and `load_history`, through W&B's public API."""

from __future__ import annotations

from typing import Any

import pandas as pd

from nanolab.analysis.load import RUN_STATS, VARIANT, history_frame, runs_frame, with_run
from nanolab.config_dicts import flatten
from nanolab.tracking.wandb_api import project_runs
from nanolab.vocab import WALL_TIME, RunStatus

STATUSES = {s.value for s in RunStatus}
WANDB_STATES = {state: status.value for state, status in {  # values: the frame holds plain strings
    "finished": RunStatus.FINISHED, "running": RunStatus.RUNNING, "crashed": RunStatus.FAILED,
    "failed": RunStatus.FAILED, "killed": RunStatus.INTERRUPTED, "preempting": RunStatus.INTERRUPTED,
    "preempted": RunStatus.INTERRUPTED}.items()}
HISTORY_SAMPLES = 100_000
# What the tracker adds to W&B's config beside the spec; locally it lives in meta.json, not in config columns.
RUN_KEYS = ("run_id", "sweep", "trial", "swept_keys", "ablation", "variant")
WANDB_ONLY_CONFIG = ("device", "run_dir", *RUN_STATS, *RUN_KEYS)
STEP_METRICS = ("train", "val", "perf")  # W&B's summary repeats their last values; summary.json does not


def load_wandb_runs(path: str, group: str | None = None) -> pd.DataFrame:
    """`load_runs` for the runs of a W&B project "ENTITY/PROJECT" (same columns)."""
    return runs_frame([wandb_run_row(run) for run in project_runs(path, group)])


def load_wandb_history(path: str, group: str | None = None) -> pd.DataFrame:
    """`load_history` for the runs of a W&B project "ENTITY/PROJECT" (same columns)."""
    return history_frame([wandb_run_history(run) for run in project_runs(path, group)])


def wandb_run_row(run: Any) -> dict:
    """A W&B public-API run as the row `load_runs` makes of a run folder.

    run_id: the config's `run_id`, else the W&B name (runs logged before names became `<name>/<run-id>`).
    status: nanolab's status from the run's summary (the tracker writes it on close), else the W&B
    state mapped by WANDB_STATES (crashed -> failed, killed -> interrupted). end_time is the start
    plus the wall time (summary `wall_time`, else W&B's `_runtime`). path is "ENTITY/PROJECT/ID".
    """
    extra = {k: run.config.get(k) for k in WANDB_ONLY_CONFIG}
    config = flatten({k: v for k, v in run.config.items() if not k.startswith("_") and k not in extra})
    summary = {k: v for k, v in run.summary.items()
               if not k.startswith("_") and k.split("/")[0] not in STEP_METRICS and _is_scalar(v)}
    wall_time = summary.get(WALL_TIME, run.summary.get("_runtime"))
    start = pd.Timestamp(run.created_at)
    status = summary.get("status")
    base = {
        "run_id": extra["run_id"] or run.name or run.id,
        "name": config.get("name"),
        "group": run.group,
        "job_type": run.job_type,
        "status": status if status in STATUSES else WANDB_STATES.get(run.state, run.state),
        VARIANT: None,  # meta.json's label is not uploaded; W&B runs are compared by their config keys
        "path": "/".join(run.path),
        "start_time": start.isoformat(),
        "end_time": (start + pd.Timedelta(seconds=wall_time)).isoformat() if wall_time is not None else None,
        WALL_TIME: wall_time,
        **{key: summary.get(key, extra[key]) for key in RUN_STATS},
    }
    return {**config, **summary, **base}


def wandb_run_history(run: Any) -> pd.DataFrame:
    """A W&B run's logged steps as `load_history` rows (`step` is the logged step, else W&B's `_step`)."""
    history = run.history(samples=HISTORY_SAMPLES, pandas=True)
    if "step" not in history and "_step" in history:
        history = history.rename(columns={"_step": "step"})
    history = history[[c for c in history.columns if not c.startswith("_") and history[c].map(_is_scalar).all()]]
    return with_run(history, wandb_run_row(run))


def _is_scalar(value: Any) -> bool:
    """Not media (tables, histograms), which W&B stores as dicts."""
    return isinstance(value, (bool, int, float, str, type(None)))
