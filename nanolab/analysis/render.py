"""A comparison table as aligned text or Markdown; loss curves per variant as a PNG (or PDF, SVG, ...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from nanolab.analysis.stats import COUNTED, as_list, did_you_mean, label, require_keys, require_metric
from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.files import atomic_path, write_text
from nanolab.vocab import VAL_LOSS


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
    for column in COUNTED.values():
        if table[column].any():
            shown[column] = table[column]
    return shown


def _num(x: float, spec: str) -> str:
    return "-" if pd.isna(x) else format(x, spec)


def _interval(low: float, high: float) -> str:
    return "-" if pd.isna(low) else f"[{low:+.4f}, {high:+.4f}]"


def plot_history(history: pd.DataFrame, by: str | Sequence[str], path: str | os.PathLike,
                 metric: str = VAL_LOSS) -> Path:
    """A plot of `metric` against step, one line per variant: the mean over its runs, shaded min-max.

    The format is the file's suffix: any that matplotlib writes (`check_plot_path`).

    `history` is a `load_history` frame holding the `by` columns too, e.g.
    `history.merge(runs[["run_id", "model.activation"]], on="run_id")`.
    """
    by = as_list(by)
    check_plot_path(path)
    require_keys(history, by)
    require_metric(history, metric)
    data = history.assign(**{metric: pd.to_numeric(history[metric], errors="coerce")})
    data = data[np.isfinite(data[metric])]
    if data.empty:
        raise NanolabError(f"no finite values of {metric!r} to plot")
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for key, runs in data.groupby(by, sort=False, dropna=False):
        curve = runs.groupby("step")[metric].agg(["mean", "min", "max"])
        name = f"{label(dict(zip(by, key)))} (n={runs['run_id'].nunique()})"
        (line,) = ax.plot(curve.index, curve["mean"], label=name)
        ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xlabel="step", ylabel=metric, title=f"{metric} by {', '.join(by)}: mean over runs, band min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=120)
    return path


def check_plot_path(path: str | os.PathLike) -> None:
    """A NanolabError unless `path` ends in a format matplotlib writes (.png, .pdf, .svg, ...)."""
    suffix = Path(path).suffix.lower()
    formats = [f".{name}" for name in sorted(FigureCanvasBase.get_supported_filetypes())]
    if suffix not in formats:
        raise NanolabError(f"{path}: unknown plot format {suffix!r}; accepted: {', '.join(formats)}"
                           f"{did_you_mean(closest(suffix, formats))}")


def caption(table: pd.DataFrame, runs: int, finished: int, where: str) -> str:
    """What the table compares, over which runs, against which baseline."""
    attrs = table.attrs
    return (f"{attrs['metric']} by {', '.join(attrs['by'])} in {where}: {runs} runs, {finished} finished\n"
            f"baseline {attrs['baseline']}; {attrs['confidence']:.0%} CI of the difference (Welch); "
            "* = the interval excludes 0")


def write_tables(table: pd.DataFrame, title: str, csv: str | None = None, markdown: str | None = None) -> None:
    """The table as CSV (every figure, unrounded) and as Markdown under `title`, where asked."""
    if csv:
        write_text(Path(csv), table.to_csv(index=False))
    if markdown:
        write_text(Path(markdown), title + "\n\n" + to_markdown(table) + "\n")
