"""Run folders and W&B runs -> pandas; comparison tables with Welch confidence intervals; loss plots.

    runs = load_runs("runs/", group="activation")      # one row per run, config flattened with dots
    table = compare(runs, by=varying_keys(runs))       # one row per variant, best first
    print(format_table(table))

Runs from the local run folders (`load_runs`, `load_history`) and from W&B (`load_wandb_runs`,
`load_wandb_history`) give tables with the same columns, so everything below works on either.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from scipy import stats

from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.spec import flatten

RUN_STATS = ["params", "non_embedding_params", "flops_per_token"]
BASE_COLUMNS = ["run_id", "name", "group", "job_type", "status", "path",
                "start_time", "end_time", "wall_time", *RUN_STATS]
HISTORY_COLUMNS = ["run_id", "name", "group", "step"]
CONFIG_SECTIONS = ("data", "model", "train")
UNFINISHED = ["running", "interrupted", "diverged", "pruned", "failed"]  # counted, kept out of the statistics
WANDB_STATES = {"finished": "finished", "running": "running", "crashed": "failed", "failed": "failed",
                "killed": "interrupted", "preempting": "interrupted", "preempted": "interrupted"}
WANDB_HISTORY_SAMPLES = 100_000
WANDB_ONLY_CONFIG = ("device", "run_dir", *RUN_STATS)  # the tracker adds these to W&B's config (meta locally)
STEP_METRICS = ("train", "val", "perf")  # W&B's summary repeats their last values; summary.json does not

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]


# ----------------------------------------------------------------------------- local run folders


def load_runs(paths: PathsLike, group: str | None = None) -> pd.DataFrame:
    """One row per run found under `paths` (run folders, `<name>` folders or whole roots, searched recursively).

    Columns: BASE_COLUMNS (times as UTC datetimes), every config key flattened with dots
    (`model.activation`, `tracking.tags` as a list, ...) and every summary key (`best/val_loss`, ...).
    `group` keeps the runs of that group (meta's group, else `tracking.group`). Unreadable run folders
    are skipped with a warning.
    """
    return _frame([row for _, row in _runs(paths, group)])


def load_history(paths: PathsLike, group: str | None = None) -> pd.DataFrame:
    """Every logged step of every run, long format: run_id, name, group, step, one column per metric.

    Train and eval rows logged at the same step are merged into one row; a step logged twice (after a
    resume) keeps its last values.
    """
    frames = [_with_run(_read_metrics(folder / "metrics.jsonl"), row) for folder, row in _runs(paths, group)]
    return _history_frame(frames)


def _runs(paths: PathsLike, group: str | None) -> Iterator[tuple[Path, dict]]:
    """(folder, row) for each readable run folder under `paths`, in path order, of `group` if given."""
    for folder in _run_folders(paths):
        try:
            row = _read_run(folder)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            warnings.warn(f"{folder}: unreadable run folder skipped ({exc})")
            continue
        if group is None or row["group"] == group:
            yield folder, row


def _run_folders(paths: PathsLike) -> list[Path]:
    """Directories holding config.yaml and meta.json under each path (itself included), without duplicates."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            warnings.warn(f"{path}: no such run folder or directory; skipped")
            continue
        for meta in sorted(path.rglob("meta.json")):
            if (meta.parent / "config.yaml").is_file():
                found.setdefault(meta.parent.resolve())
            else:
                warnings.warn(f"{meta.parent}: meta.json without config.yaml; skipped")
    return list(found)


def _read_run(folder: Path) -> dict:
    """A run folder as one flat row: config keys, summary keys, then the base columns (which win)."""
    meta = _mapping(json.loads((folder / "meta.json").read_text(encoding="utf-8")), "meta.json")
    config = flatten(_mapping(yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")), "config.yaml"))
    summary_file = folder / "summary.json"
    summary = {}
    if summary_file.is_file():
        summary = _mapping(json.loads(summary_file.read_text(encoding="utf-8")), "summary.json")
    base = {
        "run_id": meta.get("run_id", folder.name),
        "name": meta.get("name", config.get("name")),
        "group": meta.get("group") or config.get("tracking.group"),
        "job_type": meta.get("job_type", config.get("tracking.job_type")),
        "status": meta.get("status"),
        "path": str(folder),
        "start_time": meta.get("start_time"),
        "end_time": meta.get("end_time"),
        "wall_time": meta.get("wall_time", summary.get("wall_time")),
        **{key: meta.get(key) for key in RUN_STATS},
    }
    return {**config, **summary, **base}


def _mapping(data: Any, what: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{what} holds {type(data).__name__}, not a mapping")
    return data


def _read_metrics(path: Path) -> pd.DataFrame:
    """metrics.jsonl as a frame; lines that do not parse (a run killed mid-write) are left out."""
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(_mapping(json.loads(line), "line"))
        except ValueError:
            if line.strip():
                warnings.warn(f"{path}: unparsable line skipped: {line[:60]!r}")
    return pd.DataFrame(rows)


def _with_run(metrics: pd.DataFrame, row: dict) -> pd.DataFrame:
    """One row per step (merging rows of the same step, later values winning) tagged with the run."""
    if "step" not in metrics:
        metrics = pd.DataFrame(columns=["step"])
    merged = metrics.dropna(subset=["step"]).groupby("step", sort=True).last().reset_index()
    merged = merged.assign(run_id=row["run_id"], name=row["name"], group=row["group"])
    return merged[HISTORY_COLUMNS + [c for c in merged.columns if c not in HISTORY_COLUMNS]]


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Run rows as a DataFrame: base columns first, times parsed, at least the base columns when empty."""
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=BASE_COLUMNS)
    df = df[BASE_COLUMNS + [c for c in df.columns if c not in BASE_COLUMNS]]
    for column in ("start_time", "end_time"):
        df[column] = pd.to_datetime(df[column], utc=True, errors="coerce", format="ISO8601")
    df["wall_time"] = pd.to_numeric(df["wall_time"], errors="coerce")
    return df


def _history_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY_COLUMNS)


# ----------------------------------------------------------------------------- W&B


def load_wandb_runs(path: str, group: str | None = None) -> pd.DataFrame:
    """`load_runs` for the runs of a W&B project "ENTITY/PROJECT" (same columns)."""
    return _frame([wandb_run_row(run) for run in _wandb_runs(path, group)])


def load_wandb_history(path: str, group: str | None = None) -> pd.DataFrame:
    """`load_history` for the runs of a W&B project "ENTITY/PROJECT" (same columns)."""
    return _history_frame([wandb_run_history(run) for run in _wandb_runs(path, group)])


def _wandb_runs(path: str, group: str | None) -> list:
    import wandb

    try:
        return list(wandb.Api().runs(path, filters={"group": group} if group else {}))
    except (wandb.errors.Error, ValueError) as exc:
        raise NanolabError(f"W&B runs of {path!r}: {exc}") from None


def wandb_run_row(run: Any) -> dict:
    """A W&B public-API run as the row `load_runs` makes of a run folder (nanolab names W&B runs by run id).

    status: nanolab's status from the run's summary (the tracker writes it on close), else the W&B
    state mapped by WANDB_STATES (crashed -> failed, killed -> interrupted). end_time is the start
    plus the wall time (summary `wall_time`, else W&B's `_runtime`). path is "ENTITY/PROJECT/ID".
    """
    extra = {k: run.config.get(k) for k in WANDB_ONLY_CONFIG}
    config = flatten({k: v for k, v in run.config.items() if not k.startswith("_") and k not in extra})
    summary = {k: v for k, v in run.summary.items()
               if not k.startswith("_") and k.split("/")[0] not in STEP_METRICS and _is_scalar(v)}
    wall_time = summary.get("wall_time", run.summary.get("_runtime"))
    start = pd.Timestamp(run.created_at)
    status = summary.get("status")
    base = {
        "run_id": run.name or run.id,
        "name": config.get("name"),
        "group": run.group,
        "job_type": run.job_type,
        "status": status if status in ["finished", *UNFINISHED] else WANDB_STATES.get(run.state, run.state),
        "path": "/".join(run.path),
        "start_time": start.isoformat(),
        "end_time": (start + pd.Timedelta(seconds=wall_time)).isoformat() if wall_time is not None else None,
        "wall_time": wall_time,
        **{key: summary.get(key, extra[key]) for key in RUN_STATS},
    }
    return {**config, **summary, **base}


def wandb_run_history(run: Any) -> pd.DataFrame:
    """A W&B run's logged steps as `load_history` rows (`step` is the logged step, else W&B's `_step`)."""
    history = run.history(samples=WANDB_HISTORY_SAMPLES, pandas=True)
    if "step" not in history and "_step" in history:
        history = history.rename(columns={"_step": "step"})
    history = history[[c for c in history.columns if not c.startswith("_") and history[c].map(_is_scalar).all()]]
    return _with_run(history, wandb_run_row(run))


def _is_scalar(value: Any) -> bool:
    """Not media (tables, histograms), which W&B stores as dicts."""
    return isinstance(value, (bool, int, float, str, type(None)))


# ----------------------------------------------------------------------------- comparison


def varying_keys(df: pd.DataFrame) -> list[str]:
    """The `data.*`, `model.*` and `train.*` columns whose values differ between the rows of `df`."""
    keys = [c for c in df.columns if c.split(".")[0] in CONFIG_SECTIONS]
    return [c for c in keys if df[c].map(repr).nunique() > 1]


def compare(df: pd.DataFrame, by: str | Sequence[str], metric: str = "best/val_loss",
            baseline: Any = None, confidence: float = 0.95, direction: str = "minimize") -> pd.DataFrame:
    """One row per variant (the distinct values of the `by` columns), best mean first.

    Only runs with status `finished` enter the statistics: n, mean, std (ddof=1), min, max of `metric`.
    Runs with another status are counted in `n_running`, `n_interrupted`, `n_diverged`, `n_pruned`,
    `n_failed`. `diff` is the variant's mean minus the baseline's; `ci_low`/`ci_high` the Welch
    `confidence` interval of that difference (t with Welch-Satterthwaite degrees of freedom); `p_value`
    Welch's t-test; `significant` whether the interval excludes 0. With fewer than two runs on either side
    these are NaN.

    `baseline` names a variant: a dict {key: value}, a tuple of values in `by` order, or a value when `by`
    is one key. Default: the variant with the most finished runs, ties going to the one seen first in `df`.
    """
    if df.empty:
        raise NanolabError("no runs to compare")
    by = _as_list(by)
    _require_keys(df, by)
    _require_metric(df, metric)
    if direction not in ("minimize", "maximize"):
        raise NanolabError(f"direction {direction!r}: expected minimize or maximize")
    variants = []
    for key, runs in df.groupby(by, sort=False, dropna=False):
        values = pd.to_numeric(runs.loc[runs["status"] == "finished", metric], errors="coerce").dropna()
        counts = runs["status"].value_counts()
        variants.append((dict(zip(by, key)), values, {f"n_{s}": int(counts.get(s, 0)) for s in UNFINISHED}))
    base = _baseline_index([keys for keys, _, _ in variants], [len(v) for _, v, _ in variants], by, baseline)
    rows = []
    for i, (keys, values, counts) in enumerate(variants):
        diff, low, high, p = _welch(values, variants[base][1], confidence) if i != base else (0.0, *[np.nan] * 3)
        rows.append({**keys, "n": len(values), "mean": values.mean(), "std": values.std(ddof=1),
                     "min": values.min(), "max": values.max(), "diff": diff, "ci_low": low, "ci_high": high,
                     "p_value": p, "significant": bool(low > 0 or high < 0), "baseline": i == base, **counts})
    table = pd.DataFrame(rows).sort_values("mean", ascending=direction == "minimize",
                                           na_position="last", kind="stable").reset_index(drop=True)
    table.attrs.update(metric=metric, by=by, confidence=confidence, direction=direction,
                       baseline=_label(variants[base][0]))
    return table


def _welch(a: pd.Series, b: pd.Series, confidence: float) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its Welch confidence interval and Welch's t-test p-value (NaN when n < 2)."""
    if a.empty or b.empty:
        return (np.nan,) * 4
    diff = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if len(a) < 2 or len(b) < 2 or va + vb == 0:
        return diff, np.nan, np.nan, np.nan
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf((1 + confidence) / 2, dof) * np.sqrt(va + vb)
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return diff, diff - half, diff + half, float(p)


def _baseline_index(keys: list[dict], sizes: list[int], by: list[str], baseline: Any) -> int:
    if baseline is None:
        return sizes.index(max(sizes))  # list.index: the first of the largest
    if isinstance(baseline, dict):
        unknown = [k for k in baseline if k not in by]
        if unknown:
            raise NanolabError(f"baseline key {unknown[0]!r} is not among the compared keys: {', '.join(by)}")
        wanted = baseline
    else:
        values = tuple(baseline) if isinstance(baseline, (tuple, list)) else (baseline,)
        if len(values) != len(by):
            raise NanolabError(f"baseline {baseline!r}: expected {len(by)} value(s), for {', '.join(by)}")
        wanted = dict(zip(by, values))
    for i, variant in enumerate(keys):
        if all(_same(variant[k], v) for k, v in wanted.items()):
            return i
    raise NanolabError(f"baseline {_label(wanted)}: no such variant; variants: "
                       + "; ".join(_label(k) for k in keys))


def _same(value: Any, wanted: Any) -> bool:
    """Equal, or equal as text or as numbers (a baseline typed on the command line is text)."""
    if value == wanted or str(value) == str(wanted):
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _label(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items())


def _as_list(by: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    return [k.strip() for k in by.split(",") if k.strip()] if isinstance(by, str) else list(by)


def _require_keys(df: pd.DataFrame, by: list[str]) -> None:
    if not by:
        raise NanolabError("nothing to compare by: name at least one config key (e.g. model.activation)")
    for key in by:
        if key not in df.columns:
            choices = varying_keys(df) or [c for c in df.columns if c.split(".")[0] in CONFIG_SECTIONS]
            hint = closest(key, list(map(str, df.columns)))
            raise NanolabError(f"unknown key {key!r} to compare by{_did_you_mean(hint)}; "
                               f"keys that vary across these runs: {', '.join(choices) or 'none'}")


def _require_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns:
        metrics = [c for c in df.select_dtypes("number").columns
                   if c.split(".")[0] not in CONFIG_SECTIONS and c != "seed"]
        raise NanolabError(f"unknown metric {metric!r}{_did_you_mean(closest(metric, metrics))}; "
                           f"metrics: {', '.join(metrics) or 'none'}")


def _did_you_mean(hint: str | None) -> str:
    return f" (did you mean {hint!r}?)" if hint else ""


# ----------------------------------------------------------------------------- tables and plots


def format_table(table: pd.DataFrame) -> str:
    """The comparison as aligned text; `*` marks a difference whose interval excludes 0."""
    return _display(table).to_string(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (the same cells as `format_table`)."""
    shown = _display(table)
    n_keys = table.columns.get_loc("n")
    rule = ["---"] * n_keys + ["---:"] * (len(shown.columns) - n_keys)
    rows = [shown.columns, rule, *shown.itertuples(index=False)]
    return "\n".join(_markdown_row(row) for row in rows)


def _markdown_row(values: Sequence[Any]) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: 4 decimals, signed differences, the interval in one column, status counts if any."""
    by = list(table.columns[: table.columns.get_loc("n")])
    shown = table[by].astype(str)
    shown["n"] = table["n"]
    for column in ("mean", "std", "min"):
        shown[column] = table[column].map(lambda x: _num(x, ".4f"))
    shown["diff"] = [("baseline" if b else _num(d, "+.4f")) for b, d in zip(table["baseline"], table["diff"])]
    ci = f"{table.attrs['confidence']:.0%} CI" if "confidence" in table.attrs else "CI"
    shown[ci] = [_interval(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    shown["p"] = table["p_value"].map(lambda p: _num(p, ".3g"))
    shown["sig"] = np.where(table["significant"], "*", "")
    for status in UNFINISHED:
        if table[f"n_{status}"].any():
            shown[f"n_{status}"] = table[f"n_{status}"]
    return shown


def _num(x: float, spec: str) -> str:
    return "-" if pd.isna(x) else format(x, spec)


def _interval(low: float, high: float) -> str:
    return "-" if pd.isna(low) else f"[{low:+.4f}, {high:+.4f}]"


def plot_history(history: pd.DataFrame, by: str | Sequence[str], path: str | os.PathLike,
                 metric: str = "val/loss") -> Path:
    """A PNG of `metric` against step, one line per variant: the mean over its runs, shaded min-max.

    `history` is a `load_history` frame holding the `by` columns too, e.g.
    `history.merge(runs[["run_id", "model.activation"]], on="run_id")`.
    """
    by = _as_list(by)
    _require_keys(history, by)
    _require_metric(history, metric)
    data = history.assign(**{metric: pd.to_numeric(history[metric], errors="coerce")})
    data = data[np.isfinite(data[metric])]
    if data.empty:
        raise NanolabError(f"no finite values of {metric!r} to plot")
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for key, runs in data.groupby(by, sort=False, dropna=False):
        curve = runs.groupby("step")[metric].agg(["mean", "min", "max"])
        label = f"{_label(dict(zip(by, key)))} (n={runs['run_id'].nunique()})"
        (line,) = ax.plot(curve.index, curve["mean"], label=label)
        ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} by {', '.join(by)}: mean over runs, band min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------- the `nanolab compare` verb


def compare_command(paths: PathsLike | None = None, group: str | None = None,
                    by: str | Sequence[str] | None = None, metric: str = "best/val_loss",
                    csv: str | None = None, markdown: str | None = None, plot: str | None = None,
                    wandb_path: str | None = None, baseline: str | None = None,
                    direction: str = "minimize", plot_metric: str = "val/loss") -> str:
    """Load the runs (local folders, default $NANOLAB_RUNS or ./runs; or W&B "ENTITY/PROJECT"), compare
    them by `by` (default: the config keys that vary), write the requested files; return the text to print.

    `baseline` is "value" (one key) or "key=value,key=value"; values parse as YAML scalars.
    """
    runs, where = _load_for_compare(paths, group, wandb_path)
    by = _as_list(by) if by else varying_keys(runs)
    if not by:
        raise NanolabError(f"the {len(runs)} runs in {where} share every data/model/train key; name one with --by")
    table = compare(runs, by, metric, baseline=_parse_baseline(baseline), direction=direction)
    finished = int((runs["status"] == "finished").sum())
    caption = (f"{metric} by {', '.join(by)} in {where}: {len(runs)} runs, {finished} finished\n"
               f"baseline {table.attrs['baseline']}; {table.attrs['confidence']:.0%} CI of the difference "
               "(Welch); * = the interval excludes 0")
    text = caption + "\n" + format_table(table)
    if csv:
        _write(csv, table.to_csv(index=False))
    if markdown:
        _write(markdown, caption + "\n\n" + to_markdown(table) + "\n")
    if plot:
        history = load_wandb_history(wandb_path, group) if wandb_path else load_history(_default(paths), group)
        variants = runs.loc[runs["status"] == "finished", ["run_id", *by]]
        plot_history(history.drop(columns=[c for c in by if c in history]).merge(variants, on="run_id"),
                     by, plot, plot_metric)
    return text


def _load_for_compare(paths: PathsLike | None, group: str | None,
                      wandb_path: str | None) -> tuple[pd.DataFrame, str]:
    """The runs and a phrase naming where they came from; a NanolabError when there are none."""
    if wandb_path:
        runs, where = load_wandb_runs(wandb_path, group), f"W&B {wandb_path}"
    else:
        paths = _default(paths)
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        for path in listed:
            if not Path(path).exists():
                raise NanolabError(f"{path}: no such run folder or directory")
        runs = load_runs(paths)
        where = ", ".join(map(str, listed))
        if group is not None and not runs.empty:
            groups = sorted(runs["group"].dropna().unique())
            runs = runs[runs["group"] == group].reset_index(drop=True)
            if runs.empty:
                raise NanolabError(f"no runs of group {group!r} in {where}{_did_you_mean(closest(group, groups))}; "
                                   f"groups: {', '.join(groups) or 'none'}")
    if runs.empty:
        raise NanolabError(f"no runs found in {where}" + (f" for group {group!r}" if group else ""))
    return runs, where + (f" (group {group})" if group else "")


def _default(paths: PathsLike | None) -> PathsLike:
    return paths or os.environ.get("NANOLAB_RUNS", "runs")


def _parse_baseline(text: str | None) -> Any:
    """'gelu' -> 'gelu'; 'model.activation=gelu,train.lr=1e-3' -> {'model.activation': 'gelu', 'train.lr': ...}."""
    if not isinstance(text, str):
        return text
    if "=" not in text:
        return yaml.safe_load(text)
    pairs = (part.split("=", 1) for part in text.split(","))
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
