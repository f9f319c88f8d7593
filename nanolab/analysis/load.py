"""Local run folders -> pandas: one row per run (`load_runs`) and one row per logged step (`load_history`).

Every read goes through `nanolab.runfolder`; set-aside folders (`<run-id>.attemptN`, `.old-*`) are never runs.
The frame helpers at the bottom are shared with the W&B loader, so both give the same columns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder, RunStore, is_set_aside
from nanolab.spec import flatten
from nanolab.vocab import WALL_TIME

RUN_STATS = ["params", "non_embedding_params", "flops_per_token"]
BASE_COLUMNS = ["run_id", "name", "group", "job_type", "status", "path",
                "start_time", "end_time", WALL_TIME, *RUN_STATS]
HISTORY_COLUMNS = ["run_id", "name", "group", "step"]

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]
RunsLike = PathsLike | pd.DataFrame  # a DataFrame: a `load_runs` frame, whose `path` column names the folders


def load_runs(paths: RunsLike, group: str | None = None) -> pd.DataFrame:
    """One row per run found under `paths` (run folders, `<name>` folders or whole roots, searched recursively).

    Columns: BASE_COLUMNS (times as UTC datetimes), every config key flattened with dots
    (`model.activation`, `tracking.tags` as a list, ...) and every summary key (`best/val_loss`, ...).
    `group` keeps the runs of that group (meta's group, else `tracking.group`). Unreadable run folders
    are skipped with a warning.
    """
    return runs_frame([row for _, row in _runs(paths, group)])


def load_history(runs: RunsLike, group: str | None = None) -> pd.DataFrame:
    """Every logged step of every run, long format: run_id, name, group, step, one column per metric.

    `runs` is what `load_runs` takes, or the frame it returned (`load_history(load_runs("runs/"))`).
    Train and eval rows logged at the same step are merged into one row; a step logged twice (after a
    resume) keeps its last values.
    """
    return history_frame([with_run(pd.DataFrame(folder.metrics()), row) for folder, row in _runs(runs, group)])


def _runs(source: RunsLike, group: str | None) -> Iterator[tuple[RunFolder, dict]]:
    """(folder, row) for each readable run folder of `source`, in path order, of `group` if given."""
    for folder in run_folders(source):
        try:
            row = run_row(folder)
        except NanolabError as exc:
            warnings.warn(f"{folder.path}: unreadable run folder skipped ({exc})")
            continue
        if group is None or row["group"] == group:
            yield folder, row


def run_folders(source: RunsLike) -> list[RunFolder]:
    """The run folders of `source`, warning about paths that do not exist and meta.json without config.yaml."""
    if isinstance(source, pd.DataFrame):
        if "path" not in source:
            raise NanolabError("this DataFrame has no `path` column; pass a load_runs frame or run folder paths")
        source = list(source["path"])
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    for path in paths:
        if not path.exists():
            warnings.warn(f"{path}: no such run folder or directory; skipped")
            continue
        for meta in path.rglob("meta.json"):  # RunStore.runs leaves these out silently; say why
            folder = RunFolder(meta.parent)
            if not folder.config_path.is_file() and not any(map(is_set_aside, meta.relative_to(path).parts)):
                warnings.warn(f"{folder.path}: meta.json without config.yaml; skipped")
    return RunStore.runs([p for p in paths if p.exists()])


def run_row(folder: RunFolder) -> dict:
    """A run folder as one flat row: config keys, summary keys, then the base columns (which win)."""
    meta, config, summary = folder.read_meta(), flatten(folder.read_config()), folder.read_summary()
    base = {
        "run_id": meta.get("run_id", folder.run_id),
        "name": meta.get("name", config.get("name")),
        "group": meta.get("group") or config.get("tracking.group"),
        "job_type": meta.get("job_type", config.get("tracking.job_type")),
        "status": meta.get("status"),
        "path": str(folder.path),
        "start_time": meta.get("start_time"),
        "end_time": meta.get("end_time"),
        WALL_TIME: meta.get(WALL_TIME, summary.get(WALL_TIME)),
        **{key: meta.get(key) for key in RUN_STATS},
    }
    return {**config, **summary, **base}


# ----------------------------------------------------------------------------- frames (shared with W&B)


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Run rows as a DataFrame: base columns first, times parsed, at least the base columns when empty."""
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=BASE_COLUMNS)
    df = df[BASE_COLUMNS + [c for c in df.columns if c not in BASE_COLUMNS]]
    for column in ("start_time", "end_time"):
        df[column] = pd.to_datetime(df[column], utc=True, errors="coerce", format="ISO8601")
    df[WALL_TIME] = pd.to_numeric(df[WALL_TIME], errors="coerce")
    return df


def with_run(metrics: pd.DataFrame, row: dict) -> pd.DataFrame:
    """One row per step (merging rows of the same step, later values winning) tagged with the run."""
    if "step" not in metrics:
        metrics = pd.DataFrame(columns=["step"])
    merged = metrics.dropna(subset=["step"]).groupby("step", sort=True).last().reset_index()
    merged = merged.assign(run_id=row["run_id"], name=row["name"], group=row["group"])
    return merged[HISTORY_COLUMNS + [c for c in merged.columns if c not in HISTORY_COLUMNS]]


def history_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY_COLUMNS)
