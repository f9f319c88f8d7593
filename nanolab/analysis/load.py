"""Local run folders -> pandas: one row per run (`load_runs`) and one row per logged step (`load_history`).

Every read goes through `nanolab.runfolder`; set-aside folders (`<run-id>.attemptN`, `.old-*`) are never runs.
The frame helpers below them are shared with the W&B loader, so both give the same columns. At the bottom, a
history as curves against a compute axis (step, tokens, flops, wall) and each run's value at one point of it.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from nanolab.analysis.stats import TUNED, did_you_mean, require_metric
from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.runfolder import RunFolder, RunStore, is_set_aside
from nanolab.config_dicts import flatten
from nanolab.vocab import AXES, FLOPS, TOKENS, VAL_LOSS, WALL_TIME

RUN_STATS = ["params", "non_embedding_params", "flops_per_token"]
VARIANT = "variant"  # an ablation run's variant as meta.json labels it: a `variants:` name, or 'activation=relu'
BASE_COLUMNS = ["run_id", "name", "group", "job_type", "status", VARIANT, "path",
                "start_time", "end_time", WALL_TIME, *RUN_STATS]
HISTORY_COLUMNS = ["run_id", "name", "group", "step"]
TOKENS_PER_STEP = ("train.batch_size", "train.grad_accum", "data.block_size")  # config keys; their product

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]
RunsLike = PathsLike | pd.DataFrame  # a DataFrame: a `load_runs` frame, whose `path` column names the folders


def load_runs(paths: RunsLike, group: str | None = None) -> pd.DataFrame:
    """One row per run found under `paths` (run folders, `<name>` folders or whole roots, searched recursively).

    Columns: BASE_COLUMNS (times as UTC datetimes), every config key flattened with dots
    (`model.activation`, `tracking.tags` as a list, ...), every summary key (`best/val_loss`, ...) and, for the
    final runs of a tuned ablation, the values its study chose (meta's `tuned`) as `tuned.<key>` (`tuned.train.lr`).
    `group` keeps the runs of that group (meta's group, else `tracking.group`). Unreadable run folders
    are skipped with a warning.
    """
    return runs_frame([row for _, row in _runs(paths, group)])


def load_history(runs: RunsLike, group: str | None = None) -> pd.DataFrame:
    """Every logged step of every run, long format: run_id, name, group, step, one column per metric.

    `runs` is what `load_runs` takes, or the frame it returned (`load_history(load_runs("runs/"))`).
    Train and eval rows logged at the same step are merged into one row; a step logged twice (after a
    resume) keeps its last values.
    Runs logged before the compute counters get `compute/tokens` and `compute/flops` derived (`with_counters`).
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
    """A run folder as one flat row: config keys, summary keys, tuned values, then the base columns (which win)."""
    meta, config, summary = folder.read_meta(), flatten(folder.read_config()), folder.read_summary()
    tuned = {TUNED + key: value for key, value in (meta.get("tuned") or {}).items()}
    base = {
        "run_id": meta.get("run_id", folder.run_id),
        "name": meta.get("name", config.get("name")),
        "group": meta.get("group") or config.get("tracking.group"),
        "job_type": meta.get("job_type", config.get("tracking.job_type")),
        "status": meta.get("status"),
        VARIANT: meta.get("label"),
        "path": str(folder.path),
        "start_time": meta.get("start_time"),
        "end_time": meta.get("end_time"),
        WALL_TIME: meta.get(WALL_TIME, summary.get(WALL_TIME)),
        **{key: meta.get(key) for key in RUN_STATS},
    }
    return {**config, **summary, **tuned, **base}


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
    merged = with_counters(merged, row).assign(run_id=row["run_id"], name=row["name"], group=row["group"])
    return merged[HISTORY_COLUMNS + [c for c in merged.columns if c not in HISTORY_COLUMNS]]


def history_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY_COLUMNS)


def with_counters(steps: pd.DataFrame, row: dict) -> pd.DataFrame:
    """`compute/tokens` and `compute/flops` filled in where a run did not log them (runs from before they were):
    step x the config's tokens per step, then tokens x the run's flops_per_token. Wall time cannot be derived."""
    tokens = _filled(steps, TOKENS, steps["step"] * _product(row, TOKENS_PER_STEP))
    return steps.assign(**{TOKENS: tokens, FLOPS: _filled(steps, FLOPS, tokens * _product(row, ["flops_per_token"]))})


def _filled(steps: pd.DataFrame, column: str, derived: pd.Series) -> pd.Series:
    return steps[column].fillna(derived) if column in steps else derived


def _product(row: dict, keys: Sequence[str]) -> float:
    """The product of the row's values of `keys`; NaN when one is missing (a W&B run without meta's figures)."""
    values = [row.get(key) for key in keys]
    return math.prod(values) if all(isinstance(v, (int, float)) for v in values) else math.nan


# ----------------------------------------------------------------------------- equal compute (compare --at, --x)


def run_curves(history: pd.DataFrame, axis: str, metric: str = VAL_LOSS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run_id -> (x, y): each run's finite values of `metric` against `axis` (a vocab.AXES name), x ascending.

    A NanolabError names the runs that logged `metric` but never the axis (perf/wall_time, in runs from before
    it was logged); a run without any value of `metric` gets empty arrays.
    """
    column = axis_column(axis)
    if not history.empty:  # no runs: no curves, not an unknown metric
        require_metric(history, metric)
    curves, blind = {}, []
    for run_id, rows in history.reindex(columns=["run_id", column, metric]).groupby("run_id", sort=False):
        x, y = (pd.to_numeric(rows[c], errors="coerce").to_numpy(float) for c in (column, metric))
        known = np.isfinite(x) & np.isfinite(y)
        if np.isfinite(y).any() and not known.any():
            blind.append(run_id)
        order = np.argsort(x[known], kind="stable")
        curves[run_id] = (x[known][order], y[known][order])
    if blind:
        raise NanolabError(f"{len(blind)} run(s) logged {metric} without {column}, which cannot be derived for "
                           f"runs from before it was logged: {', '.join(blind)}")
    return curves


def metric_at(history: pd.DataFrame, axis: str, point: float, metric: str = VAL_LOSS) -> pd.Series:
    """Each run's `metric` at `point` on `axis` (a vocab.AXES name), `interpolate`d between its evaluations:
    a Series indexed by run_id, named like `val/loss@flops=1e+12`.

    A NanolabError names the runs whose evaluations do not reach `point` (their range, or that they have none):
    a value there would be extrapolated.
    """
    curves = run_curves(history, axis, metric)
    unreached = [f"{run} ({_span(x)})" for run, (x, _) in curves.items() if not (len(x) and x[0] <= point <= x[-1])]
    if unreached:
        raise NanolabError(f"--at {axis}={point:.12g} is outside the evaluated range of {len(unreached)} run(s): "
                           + ", ".join(unreached))
    values = {run: interpolate(x, y, point) for run, (x, y) in curves.items()}
    return pd.Series(values, name=f"{metric}@{axis}={point:.12g}", dtype=float)


def interpolate(x: np.ndarray, y: np.ndarray, point: float) -> float:
    """y at `point` on the straight line between the two evaluations around it (x ascending, point within)."""
    return float(np.interp(point, x, y))


def axis_column(axis: str) -> str:
    """The history column of an axis name (vocab.AXES: step, tokens, flops, wall)."""
    if axis not in AXES:
        raise NanolabError(f"axis {axis!r} (--x, --at): expected one of {', '.join(AXES)}"
                           f"{did_you_mean(closest(axis, list(AXES)))}")
    return AXES[axis]


def _span(x: np.ndarray) -> str:
    return f"{x[0]:.6g}..{x[-1]:.6g}" if len(x) else "no evaluation"
