"""The `nanolab compare` verb: load the runs (at a point of compute, with --at), compare them, render the table
(and files, and a plot)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from nanolab.analysis.load import PathsLike, axis_column, load_history, load_runs, metric_at
from nanolab.analysis.render import caption, check_plot_path, format_table, plot_history, write_tables
from nanolab.analysis.stats import as_list, compare, did_you_mean, is_finished, varying_keys
from nanolab.analysis.wandb_runs import load_wandb_history, load_wandb_runs
from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.rounds import decisions_table, read_record
from nanolab.runfolder import runs_root
from nanolab.spec import parse_yaml
from nanolab.vocab import AXES, BEST_VAL_LOSS, VAL_LOSS


def compare_command(paths: PathsLike | None = None, group: str | None = None,
                    by: str | Sequence[str] | None = None, metric: str | None = None,
                    csv: str | None = None, markdown: str | None = None, plot: str | None = None,
                    wandb_path: str | None = None, baseline: str | None = None,
                    direction: str = "minimize", plot_metric: str = VAL_LOSS, correction: str = "holm",
                    at: str | None = None, x: str = "step") -> str:
    """Load the runs (local folders, default $NANOLAB_RUNS or ./runs; or W&B "ENTITY/PROJECT"), compare
    them by `by` (default: the config keys that vary), write the requested files; return the text to print:
    the caption, the table and a line `wrote PATH` per file.

    `metric` defaults to best/val_loss. `at` ("flops=1e12", `parse_at`) compares instead each finished run's
    logged `metric` (default val/loss) at that point of compute (`metric_at`). `x` is the plot's axis.
    `baseline` is "value" (one key) or "key=value,key=value"; values parse as YAML scalars.
    """
    if plot:
        check_plot_path(plot)  # before any file is written
    axis_column(x)  # these two checks too
    at_point = parse_at(at) if at else None
    runs, where = _load(paths, group, wandb_path)
    by = as_list(by) if by else varying_keys(runs)
    if not by:
        raise NanolabError(f"the {len(runs)} runs in {where} share every data/model/train key; name one with --by")
    finished = runs[is_finished(runs)]
    history = _history(finished, group, wandb_path) if plot or at else None
    if at_point:
        values = metric_at(history, *at_point, metric or VAL_LOSS)
        metric = values.name
        runs = runs.assign(**{metric: runs["run_id"].map(values)})
    table = compare(runs, by, metric or BEST_VAL_LOSS, baseline=_parse_baseline(baseline), direction=direction,
                    correction=correction)
    title = caption(table, len(runs), len(finished), where)
    write_tables(table, title, csv=csv, markdown=markdown)
    if plot:
        variants = finished[["run_id", *by]]
        plot_history(history.drop(columns=[c for c in by if c in history]).merge(variants, on="run_id"),
                     by, plot, plot_metric, x=x)
    single = paths is None or isinstance(paths, (str, os.PathLike))
    listed = [] if wandb_path else [paths or runs_root()] if single else list(paths)
    return "\n".join([title, format_table(table), *sequential_decisions(listed, group),
                      *(f"wrote {path}" for path in (csv, markdown, plot) if path)])


def sequential_decisions(paths: list, group: str | None) -> list[str]:
    """The decisions table of each sequential ablation among `paths` (its runs folder, or `group`'s in a runs
    root): the table above does not adjust for the looks; this one does."""
    folders = [Path(p) for p in paths] + [Path(p) / group for p in paths if group]
    return [f"\n{decisions_table(record, f'ablation {folder.name}')}" for folder in dict.fromkeys(folders)
            if (record := read_record(folder))]


def parse_at(text: str) -> tuple[str, float]:
    """'flops=1e12' -> ('flops', 1e12): an axis name (vocab.AXES) and a finite number; else a NanolabError."""
    key, _, number = text.partition("=")
    try:
        point = float(number)
    except ValueError:
        point = math.nan
    if key.strip() not in AXES or not math.isfinite(point):
        forms = ", ".join(f"{name}=N" for name in AXES)
        raise NanolabError(f"--at {text}: expected KEY=NUMBER, one of {forms} (e.g. --at flops=1e12)")
    return key.strip(), point


def _history(finished: pd.DataFrame, group: str | None, wandb_path: str | None) -> pd.DataFrame:
    """The logged steps of the finished runs: the runs the table compares."""
    if not wandb_path:
        return load_history(finished)
    history = load_wandb_history(wandb_path, group)
    return history[history["run_id"].isin(finished["run_id"])]


def _load(paths: PathsLike | None, group: str | None, wandb_path: str | None) -> tuple[pd.DataFrame, str]:
    """The runs and a phrase naming where they came from; a NanolabError when there are none."""
    if wandb_path and paths:
        listed = ", ".join(map(str, [paths] if isinstance(paths, (str, os.PathLike)) else paths))
        raise NanolabError(f"{listed} and --wandb {wandb_path}: runs come from run folders or from W&B; "
                           "give one of them")
    if wandb_path:
        runs, where = load_wandb_runs(wandb_path, group), f"W&B {wandb_path}"
    else:
        paths = paths or runs_root()
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        for path in listed:
            if not Path(path).exists():
                raise NanolabError(f"{path}: no such run folder or directory")
        runs = load_runs(listed)
        where = ", ".join(map(str, listed))
        if group is not None and not runs.empty:
            groups = sorted(runs["group"].dropna().unique())
            runs = runs[runs["group"] == group].reset_index(drop=True)
            if runs.empty:
                raise NanolabError(f"no runs of group {group!r} in {where}{did_you_mean(closest(group, groups))}; "
                                   f"groups: {', '.join(groups) or 'none'}")
    if runs.empty:
        raise NanolabError(f"no runs found in {where}" + (f" for group {group!r}" if group else ""))
    return runs, where + (f" (group {group})" if group else "")


def _parse_baseline(text: Any) -> Any:
    """'gelu' -> 'gelu'; 'model.activation=gelu,train.lr=1e-3' -> {'model.activation': 'gelu', 'train.lr': ...}.

    Anything but text (an ablation's baseline, already a value or a dict) is returned as it is.
    """
    if not isinstance(text, str):
        return text
    if "=" not in text:
        return parse_yaml(text, "--baseline")
    pairs = (part.split("=", 1) for part in text.split(","))
    return {key.strip(): parse_yaml(value, f"--baseline {key.strip()}") for key, value in pairs}
