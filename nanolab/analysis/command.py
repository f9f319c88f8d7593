"""The `nanolab compare` verb: load the runs (at a point of compute, with --at), compare them, render the table
(and files, and a plot)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from nanolab.analysis.findings import target_finding
from nanolab.analysis.load import VARIANT, PathsLike, axis_column, load_history, load_runs, metric_at
from nanolab.analysis.render import caption, check_plot_path, format_table, plot_history, write_tables
from nanolab.analysis.stats import as_list, compare, did_you_mean, is_finished, label, same_value, varying_keys
from nanolab.analysis.wandb_runs import load_wandb_history, load_wandb_runs
from nanolab.errors import NanolabError
from nanolab.files import read_json
from nanolab.plan import read_record
from nanolab import rounds
from nanolab.registry import closest
from nanolab.runfolder import runs_root
from nanolab.spec import parse_yaml
from nanolab.vocab import AXES, BEST_VAL_LOSS, VAL_LOSS

PLAN_JSON = "plan.json"  # the record nanolab.plan writes beside an ablation's runs


def compare_command(paths: PathsLike | None = None, group: str | None = None,
                    by: str | Sequence[str] | None = None, metric: str | None = None,
                    csv: str | None = None, markdown: str | None = None, plot: str | None = None,
                    wandb_path: str | None = None, baseline: str | None = None,
                    direction: str = "minimize", plot_metric: str = VAL_LOSS, correction: str = "holm",
                    at: str | None = None, x: str = "step", target: float | None = None, as_json: bool = False) -> str:
    """Load the runs (local folders, default $NANOLAB_RUNS or ./runs; or W&B "ENTITY/PROJECT"), compare
    them by `by` (default: the config keys that vary), write the requested files; return the text to print:
    the caption, the table and a line `wrote PATH` per file.

    `metric` defaults to best/val_loss. `at` ("flops=1e12", `parse_at`) compares instead each finished run's
    logged `metric` (default val/loss) at that point of compute (`metric_at`). `x` is the plot's axis.
    `baseline` is "value" (one key) or "key=value,key=value"; values parse as YAML scalars. `target` adds a line
    per variant: how many of its finished runs met it (`findings.target_finding`). `as_json`: the same as one JSON
    document, {caption, rows (every figure unrounded, as --csv writes them), notes, wrote}.

    An ablation's runs (`paths` the ablation file, or its group, whose folder holds the plan.json it recorded) are
    compared by its varied keys against its baseline unless `by` / `baseline` say otherwise; the caption says
    which baseline and why, and which of its variants x seeds have no finished run yet.
    """
    if plot:
        check_plot_path(plot)  # before any file is written
    axis_column(x)  # these two checks too
    at_point = parse_at(at) if at else None
    record = None if wandb_path else ablation_record(paths, group)
    if record and _is_plan_file(paths):
        paths, group = [runs_root() / record["name"]], record["name"]
    runs, where = _load(paths, group, wandb_path)
    by = as_list(by) if by else ablation_keys(record)[0] if record else varying_keys(runs)
    if not by:
        raise NanolabError(f"the {len(runs)} runs in {where} share every data/model/train key; name one with --by")
    finished = runs[is_finished(runs)]
    history = _history(finished, group, wandb_path) if plot or at else None
    if at_point:
        values = metric_at(history, *at_point, metric or VAL_LOSS)
        metric = values.name
        runs = runs.assign(**{metric: runs["run_id"].map(values)})
    chosen, why = _baseline(baseline, record, finished, by)
    table = compare(runs, by, metric or BEST_VAL_LOSS, baseline=chosen, direction=direction, correction=correction)
    title = caption(table, len(runs), len(finished), where, why) + (missing_note(record, runs, by) if record else "")
    write_tables(table, title, csv=csv, markdown=markdown)
    if plot:
        variants = finished[["run_id", *by]]
        plot_history(history.drop(columns=[c for c in by if c in history]).merge(variants, on="run_id"),
                     by, plot, plot_metric, x=x)
    met = target_lines(finished, by, table.attrs["metric"], target, direction) if target is not None else []
    single = paths is None or isinstance(paths, (str, os.PathLike))
    listed = [] if wandb_path else [paths or runs_root()] if single else list(paths)
    notes, wrote = [*met, *sequential_decisions(listed, group)], [str(path) for path in (csv, markdown, plot) if path]
    if as_json:  # every figure as Python writes a float (repr: it reads back bit for bit), NaN as null
        rows = table.astype(object).where(table.notna(), None).to_dict("records")
        return json.dumps({"caption": title, "rows": rows, "notes": [note.strip() for note in notes], "wrote": wrote},
                          indent=2, default=lambda value: value.item() if hasattr(value, "item") else str(value))
    return "\n".join([title, format_table(table), *notes, *(f"wrote {path}" for path in wrote)])


def target_lines(finished: pd.DataFrame, by: list[str], metric: str, target: float, direction: str) -> list[str]:
    """'relu: 1 of 3 seeds at or below 1.9 (seed 1: ...); mean ...' for each variant's finished runs."""
    lines = []
    for key, runs in finished.groupby(by, sort=False):
        values = pd.Series(pd.to_numeric(runs[metric], errors="coerce").to_numpy(), index=runs["seed"]).dropna()
        lines.append(f"{label(dict(zip(by, key)))}: {target_finding(values, target, direction)}")
    return lines


def ablation_record(paths: PathsLike | None, group: str | None) -> dict | None:
    """The plan.json of the ablation whose runs these are: an ablation file's, or the one in the folder of `paths`
    (a group's folder) or of `group` under them (default root: $NANOLAB_RUNS); None for runs of no ablation."""
    if _is_plan_file(paths):
        record = read_record(paths[0] if isinstance(paths, list) else paths)
        return record if record["kind"] == "ablation" else None
    listed = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths or [runs_root()])]
    if len(listed) != 1:
        return None  # runs of several folders: whichever ablations they are, compare them as runs
    candidates = [p / PLAN_JSON for p in listed] + ([p / group / PLAN_JSON for p in listed] if group else [])
    for path in candidates:
        if path.is_file():
            record = read_json(path)
            if record.get("kind") == "ablation" and (group is None or record.get("name") == group):
                return record
    return None


def ablation_keys(record: dict) -> tuple[list[str], dict | None]:
    """What an ablation's runs are compared by, and its baseline (None when no variant is the experiment itself):
    its varied keys and the experiment's values of them, or for named variants (`variants:`) their names and the
    name of the one that changes nothing: the union of the keys they change would make every row a long list."""
    if not record.get("named"):
        return list(record["varied"]), record["baseline"]
    name = next((name for name, changes in record["named"].items() if not changes), None)
    return [VARIANT], None if name is None else {VARIANT: name}


def _is_plan_file(paths: PathsLike | None) -> bool:
    listed = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or [])
    return len(listed) == 1 and Path(listed[0]).suffix in (".yaml", ".yml") and Path(listed[0]).is_file()


def _baseline(text: str | None, record: dict | None, finished: pd.DataFrame, by: list[str]) -> tuple[Any, str]:
    """The baseline to compare against and why it is the one."""
    if text is not None:
        return _parse_baseline(text), "--baseline"
    default = "the variant with the most finished runs, the first seen of a tie"
    wanted = ablation_keys(record)[1] if record else None
    if not wanted:
        return None, default + ("; the ablation's grid does not hold the experiment's values" if record else "")
    if not set(wanted) <= set(by):
        wanted = record["baseline"]  # --by names the keys that the named variants change
    if not set(wanted) <= set(by):
        return None, f"{default}; the ablation's baseline is not a variant of --by {', '.join(by)}"
    if not any(all(same_value(row[k], v) for k, v in wanted.items()) for _, row in finished.iterrows()):
        return None, f"{default}; the ablation's baseline {label(wanted)} has no finished run yet"
    return wanted, f"the baseline of the ablation {record['file']}: the experiment's own values"


def missing_note(record: dict, runs: pd.DataFrame, by: list[str]) -> str:
    """'\nnot finished (2 of 12): model.norm=rmsnorm, ... seed 2 (running); ...': the ablation's variants x the
    seeds its runs have so far, without a finished run."""
    seeds = sorted(runs["seed"].dropna().unique())
    finished = runs[is_finished(runs)]
    gaps = []
    variants = ([{VARIANT: name} for name in record["named"]] if by == [VARIANT] and record.get("named") else
                [{k: v for k, v in changes.items() if k in by} for changes in record["resolved"]["variants"].values()])
    for keys in variants:
        mine = runs[[all(same_value(row[k], v) for k, v in keys.items()) for _, row in runs.iterrows()]]
        done = set(finished.loc[finished.index.intersection(mine.index), "seed"])
        statuses = dict(zip(mine["seed"], mine["status"]))
        gaps += [f"{label(keys)} seed {seed} ({statuses.get(seed, 'not started')})" for seed in seeds
                 if seed not in done]
    total = len(record["resolved"]["variants"]) * len(seeds)
    return (f"\nnot finished ({len(gaps)} of {total} variant x seed, over the seeds started so far): "
            + "; ".join(gaps)) if gaps else ""


def sequential_decisions(paths: list, group: str | None) -> list[str]:
    """The decisions table of each sequential ablation among `paths` (its runs folder, or `group`'s in a runs
    root): the table above does not adjust for the looks; this one does."""
    folders = [Path(p) for p in paths] + [Path(p) / group for p in paths if group]
    return [f"\n{rounds.decisions_table(record, f'ablation {folder.name}')}" for folder in dict.fromkeys(folders)
            if (record := rounds.read_record(folder))]


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
