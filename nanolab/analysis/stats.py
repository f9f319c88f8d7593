"""Comparison of variants: per-variant figures of the finished runs, Welch intervals against a baseline."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.vocab import BEST_VAL_LOSS, UNFINISHED, RunStatus

CONFIG_SECTIONS = ("data", "model", "train")
# runs of these statuses are counted per variant (status -> column) and kept out of the statistics
COUNTED = {status.value: f"n_{status.value}" for status in UNFINISHED}


def is_finished(runs: pd.DataFrame) -> pd.Series:
    """The rows that enter the statistics."""
    return runs["status"] == RunStatus.FINISHED.value


def varying_keys(df: pd.DataFrame) -> list[str]:
    """The `data.*`, `model.*` and `train.*` columns whose values differ between the rows of `df`."""
    keys = [c for c in df.columns if c.split(".")[0] in CONFIG_SECTIONS]
    return [c for c in keys if df[c].map(repr).nunique() > 1]


def compare(df: pd.DataFrame, by: str | Sequence[str], metric: str = BEST_VAL_LOSS,
            baseline: Any = None, confidence: float = 0.95, direction: str = "minimize") -> pd.DataFrame:
    """One row per variant (the distinct values of the `by` columns), best mean first.

    Only finished runs enter the statistics: n, mean, std (ddof=1), min, max of `metric`. Runs with another
    status are counted in `n_running`, `n_interrupted`, `n_diverged`, `n_pruned`, `n_failed`. `diff` is the
    variant's mean minus the baseline's; `ci_low`/`ci_high` the Welch `confidence` interval of that
    difference (t with Welch-Satterthwaite degrees of freedom); `p_value` Welch's t-test; `significant`
    whether the interval excludes 0. With fewer than two runs on either side these are NaN.

    `baseline` names a variant: a dict {key: value}, a tuple of values in `by` order, or a value when `by`
    is one key. Default: the variant with the most finished runs, ties going to the one seen first in `df`.
    """
    if df.empty:
        raise NanolabError("no runs to compare")
    by = as_list(by)
    require_keys(df, by)
    require_metric(df, metric)
    if direction not in ("minimize", "maximize"):
        raise NanolabError(f"direction {direction!r}: expected minimize or maximize")
    variants = []
    for key, runs in df.groupby(by, sort=False, dropna=False):
        values = pd.to_numeric(runs.loc[is_finished(runs), metric], errors="coerce").dropna()
        counts = runs["status"].value_counts()
        variants.append((dict(zip(by, key)), values, {column: int(counts.get(s, 0)) for s, column in COUNTED.items()}))
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
                       baseline=label(variants[base][0]))
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
    raise NanolabError(f"baseline {label(wanted)}: no such variant; variants: "
                       + "; ".join(label(k) for k in keys))


def _same(value: Any, wanted: Any) -> bool:
    """Equal, or equal as text or as numbers (a baseline typed on the command line is text)."""
    if value == wanted or str(value) == str(wanted):
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- checks and names (render uses them)


def label(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items())


def as_list(by: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    return [k.strip() for k in by.split(",") if k.strip()] if isinstance(by, str) else list(by)


def require_keys(df: pd.DataFrame, by: list[str]) -> None:
    if not by:
        raise NanolabError("nothing to compare by: name at least one config key (e.g. model.activation)")
    for key in by:
        if key not in df.columns:
            varying = varying_keys(df)
            keys = [c for c in df.columns if c.split(".")[0] in CONFIG_SECTIONS]
            choices = (f"keys that vary across these runs: {', '.join(varying)}" if varying else
                       f"no config key varies across these runs; their keys: {', '.join(keys) or 'none'}")
            hint = closest(key, list(map(str, df.columns)))
            raise NanolabError(f"unknown key {key!r} to compare by{did_you_mean(hint)}; {choices}")


def require_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns:
        metrics = [c for c in df.select_dtypes("number").columns
                   if c.split(".")[0] not in CONFIG_SECTIONS and c != "seed"]
        raise NanolabError(f"unknown metric {metric!r}{did_you_mean(closest(metric, metrics))}; "
                           f"metrics: {', '.join(metrics) or 'none'}")


def did_you_mean(hint: str | None) -> str:
    return f" (did you mean {hint!r}?)" if hint else ""
