"""A comparison table as aligned text or Markdown; loss curves per variant as a PNG (or PDF, SVG, ...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from nanolab.analysis.load import run_curves
from nanolab.analysis.stats import COUNTED, CORRECTIONS, TUNED, as_list, did_you_mean, label, require_keys
from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.files import atomic_path, write_text
from nanolab.vocab import VAL_LOSS

EFFECT_SIZES = {"d_z": "paired", "g": "welch"}  # the effect-size column (Cohen's d_z, Hedges' g) of each test
AXIS_LABELS = {"step": "step", "tokens": "tokens", "flops": "FLOPs", "wall": "wall time (s)"}  # vocab.AXES names


def format_table(table: pd.DataFrame) -> str:
    """The comparison as aligned text; `*` marks a difference whose adjusted p-value is below 1 - confidence."""
    return _display(table).to_string(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (the same cells as `format_table`)."""
    shown = _display(table)
    n_keys = table.columns.get_loc("n")
    rule = ["---"] * n_keys + ["---:"] * (len(shown.columns) - n_keys)
    rows = [shown.columns, rule, *shown.itertuples(index=False)]
    return "\n".join(markdown_row(row) for row in rows)


def markdown_row(values: Sequence[Any]) -> str:
    """One row of a Markdown table, a `|` inside a cell escaped."""
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: 4 decimals, signed differences, each interval in one column, status counts if any."""
    keys = list(table.columns[: table.columns.get_loc("n")])  # the by keys, then the tuned values
    shown = pd.DataFrame({column: table[column].astype(str) for column in keys if not column.startswith(TUNED)})
    for column in (c for c in keys if c.startswith(TUNED)):
        shown["tuned " + column.removeprefix(TUNED)] = table[column].map(_value)
    shown["n"] = table["n"]
    for column in ("mean", "std", "min"):
        shown[column] = table[column].map(lambda x: _num(x, ".4f"))
    shown["diff"] = [("baseline" if b else _num(d, "+.4f")) for b, d in zip(table["baseline"], table["diff"])]
    ci = f"{table.attrs['confidence']:.0%} CI" if "confidence" in table.attrs else "CI"
    shown[ci] = [_interval(lo, hi, "+.4f") for lo, hi in zip(table["ci_low"], table["ci_high"])]
    shown["rel diff"] = ["-" if b else _relative(d, lo, hi) for b, d, lo, hi
                         in zip(table["baseline"], table["rel_diff"], table["rel_ci_low"], table["rel_ci_high"])]
    for column, test in EFFECT_SIZES.items():
        if (table["test"] == test).any():
            shown[column] = table[column].map(lambda x: _num(x, "+.2f"))
    shown["test"] = table["test"].fillna("-")
    shown["p"] = table["p_value"].map(lambda p: _num(p, ".3g"))
    shown["p adj"] = table["p_adjusted"].map(lambda p: _num(p, ".3g"))
    shown["sig"] = np.where(table["significant"], "*", "")
    for column in COUNTED.values():
        if table[column].any():
            shown[column] = table[column]
    return shown


def _relative(diff: float, low: float, high: float) -> str:
    """-0.106, -0.125, -0.087 -> '-10.6% [-12.5%, -8.7%]'; without the interval where there is none."""
    return _num(diff, "+.1%") + ("" if pd.isna(low) else " " + _interval(low, high, "+.1%"))


def _value(x: Any) -> str:
    """A tuned value: numbers to 4 significant digits (a study's floats carry 16), choices as they are."""
    return "-" if pd.isna(x) else format(x, ".4g") if isinstance(x, float) else str(x)


def _num(x: float, spec: str) -> str:
    return "-" if pd.isna(x) else format(x, spec)


def _interval(low: float, high: float, spec: str) -> str:
    return "-" if pd.isna(low) else f"[{low:{spec}}, {high:{spec}}]"


def plot_history(history: pd.DataFrame, by: str | Sequence[str], path: str | os.PathLike,
                 metric: str = VAL_LOSS, x: str = "step") -> Path:
    """A plot of `metric` against `x` (step, tokens, flops or wall), one line per variant: the mean over its runs,
    shaded min-max.

    Each variant's runs are interpolated onto one grid (the union of their x values, within the range all of them
    cover) before the mean and band are taken. On step, tokens and flops a variant's runs share their x values,
    so the grid is those values and nothing is interpolated; on wall time they do not, and the band is the spread
    at equal seconds (not at equal step, which would hide the spread in speed).

    The format is the file's suffix: any that matplotlib writes (`check_plot_path`).

    `history` is a `load_history` frame holding the `by` columns too, e.g.
    `history.merge(runs[["run_id", "model.activation"]], on="run_id")`.
    """
    by = as_list(by)
    check_plot_path(path)
    require_keys(history, by)
    curves_of_run = run_curves(history, x, metric)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for key, runs in history.groupby(by, sort=False, dropna=False):
        curves = [curves_of_run[run] for run in runs["run_id"].unique() if len(curves_of_run[run][0])]
        if curves:
            grid, values = _on_one_grid(curves)
            (line,) = ax.plot(grid, values.mean(axis=0), label=f"{label(dict(zip(by, key)))} (n={len(curves)})")
            ax.fill_between(grid, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if not ax.lines:
        raise NanolabError(f"no finite values of {metric!r} to plot")
    ax.set(xlabel=AXIS_LABELS[x], ylabel=metric, title=f"{metric} by {', '.join(by)}: mean over runs, band min-max")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=120)
    return path


def _on_one_grid(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values[run, point]): the curves interpolated onto the union of their x within their common range."""
    low, high = max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= low) & (grid <= high)]
    return grid, np.array([np.interp(grid, x, y) for x, y in curves])


def check_plot_path(path: str | os.PathLike) -> None:
    """A NanolabError unless `path` ends in a format matplotlib writes (.png, .pdf, .svg, ...)."""
    suffix = Path(path).suffix.lower()
    formats = [f".{name}" for name in sorted(FigureCanvasBase.get_supported_filetypes())]
    if suffix not in formats:
        raise NanolabError(f"{path}: unknown plot format {suffix!r}; accepted: {', '.join(formats)}"
                           f"{did_you_mean(closest(suffix, formats))}")


def caption(table: pd.DataFrame, runs: int, finished: int, where: str, why: str | None = None) -> str:
    """What the table compares, over which runs, against which baseline (and `why` that one), with which test
    and correction."""
    attrs = table.attrs
    return (f"{attrs['metric']} by {', '.join(attrs['by'])} in {where}: {runs} runs, {finished} finished\n"
            f"baseline {attrs['baseline']}{f' ({why})' if why else ''}; diff: {attrs['confidence']:.0%} CI (per "
            "comparison) and p of a paired t-test over seeds where a variant ran the baseline's seeds, else Welch's\n"
            f"rel diff = diff / baseline mean; {effect_note(table)}p adj: p {correction_note(attrs)}; "
            f"* = p adj < {1 - attrs['confidence']:.3g}")


def effect_note(table: pd.DataFrame) -> str:
    """The caption's words for the effect-size columns the table shows."""
    words = {"d_z": "d_z = Cohen's d_z (mean paired difference / its sd)",
             "g": "g = Hedges' g (diff / pooled sd, bias-corrected)"}
    return "".join(f"{words[c]}; " for c, test in EFFECT_SIZES.items() if (table["test"] == test).any())


def correction_note(attrs: dict) -> str:
    """'Holm-corrected over 4 comparisons', from a comparison table's attrs."""
    count = f"{attrs['comparisons']} comparison" + "s" * (attrs["comparisons"] != 1)
    return f"{CORRECTIONS[attrs['correction']][1]} {count}"


def write_tables(table: pd.DataFrame, title: str, csv: str | None = None, markdown: str | None = None) -> None:
    """The table as CSV (every figure, unrounded) and as Markdown under `title`, where asked."""
    if csv:
        write_text(Path(csv), table.to_csv(index=False))
    if markdown:
        write_text(Path(markdown), title + "\n\n" + to_markdown(table) + "\n")
