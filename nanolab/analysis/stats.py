"""Comparison of variants against a baseline: per-variant figures of the finished runs, a paired or Welch t-test
per variant, its p-value corrected for the number of comparisons, the difference relative to the baseline and a
standardized effect size (Cohen's d_z for a paired test, Hedges' g for Welch's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import gammaln
from statsmodels.stats.multitest import multipletests

from nanolab.errors import NanolabError
from nanolab.registry import closest
from nanolab.vocab import BEST_VAL_LOSS, UNFINISHED, RunStatus

CONFIG_SECTIONS = ("data", "model", "train")
TUNED = "tuned."  # load_runs' prefix of the values a tuned ablation's study chose: tuned.train.lr
# runs of these statuses are counted per variant (status -> column) and kept out of the statistics
COUNTED = {status.value: f"n_{status.value}" for status in UNFINISHED}
# compare(correction=...) -> (statsmodels' multipletests method, what a caption says before "N comparisons")
CORRECTIONS = {"holm": ("holm", "Holm-corrected over"), "bh": ("fdr_bh", "Benjamini-Hochberg-corrected over"),
               "none": (None, "not corrected for")}


def is_finished(runs: pd.DataFrame) -> pd.Series:
    """The rows that enter the statistics."""
    return runs["status"] == RunStatus.FINISHED.value


def varying_keys(df: pd.DataFrame) -> list[str]:
    """The `data.*`, `model.*` and `train.*` columns whose values differ between the rows of `df`, except the keys
    a tuned ablation's studies chose (their values follow from the variant; they do not define one)."""
    tuned = {c.removeprefix(TUNED) for c in df.columns if c.startswith(TUNED)}
    keys = [c for c in df.columns if c.split(".")[0] in CONFIG_SECTIONS and c not in tuned]
    return [c for c in keys if df[c].map(repr).nunique() > 1]


@dataclass
class Variant:
    keys: dict  # by-key -> value
    values: pd.Series  # the metric of its finished runs, indexed by seed (NaN where the frame has no seeds)
    counts: dict  # n_<status> -> its runs of that unfinished status
    tuned: dict  # tuned.<key> -> the value its study chose (its first run's: every seed runs with it)


def compare(df: pd.DataFrame, by: str | Sequence[str], metric: str = BEST_VAL_LOSS, baseline: Any = None,
            confidence: float = 0.95, direction: str = "minimize", correction: str = "holm") -> pd.DataFrame:
    """One row per variant (the distinct values of the `by` columns), best mean first.

    Only finished runs enter the statistics: n, mean, std (ddof=1), min, max of `metric`. Runs with another
    status are counted in `n_running`, `n_interrupted`, `n_diverged`, `n_pruned`, `n_failed`. A tuned ablation's
    runs add a column per tuned key (`tuned.train.lr`): the value the variant's study chose.

    Against the baseline (see `t_test`): `diff` (the variant's mean minus the baseline's) with its `confidence`
    interval `ci_low`/`ci_high`, `test` ("paired" or "welch") and its `p_value`. `p_adjusted` corrects the
    p-values of all variants for their number (`correction`: "holm", Holm-Bonferroni, the default; "bh",
    Benjamini-Hochberg; "none"); a variant without a p-value (fewer than two runs a side) is not counted among
    the comparisons. `significant`: p_adjusted < 1 - confidence. The intervals are per comparison, not corrected.
    `n_lower` / `n_higher`: of a paired test's seeds, how many ended below / above the baseline's run of that seed.

    The standardized effect size is the test's own: `d_z` (Cohen's d_z) for a paired test, the mean per-seed
    difference over the differences' standard deviation; `g` (Hedges' g) for Welch's, the difference over the
    pooled standard deviation, corrected for small-sample bias (the exact gamma-function factor). Each is NaN in
    the rows of the other test.

    The effect size is `rel_diff` = diff / |baseline mean|, with `rel_ci_low`/`rel_ci_high` the interval of the
    diff divided the same way: a fraction of the baseline (-0.05 = 5% lower), comparable across metrics and
    model sizes. It treats the baseline mean as a fixed number: the baseline's uncertainty is in the interval of
    the diff but not in the divisor, so the relative interval is too narrow by about the baseline's relative
    standard error (negligible for a loss of 2.0 known to +-0.01; not for a baseline mean near 0).

    `baseline` names a variant: a dict {key: value}, a tuple of values in `by` order, or a value when `by`
    is one key. Default: the variant with the most finished runs, ties going to the one seen first in `df`.
    The table's attrs hold the metric, by, confidence, direction, baseline (its label; `baseline_keys` its dict),
    correction and the number of comparisons corrected over.
    """
    if df.empty:
        raise NanolabError("no runs to compare")
    by = as_list(by)
    require_keys(df, by)
    require_metric(df, metric)
    if direction not in ("minimize", "maximize"):
        raise NanolabError(f"direction {direction!r}: expected minimize or maximize")
    if correction not in CORRECTIONS:
        raise NanolabError(f"--correction {correction}: expected holm (Holm-Bonferroni, the default), "
                           "bh (Benjamini-Hochberg) or none")
    variants = _variants(df, by, metric)
    base = variants[_baseline_index([v.keys for v in variants], [len(v.values) for v in variants], by, baseline)]
    table = pd.DataFrame([_row(variant, base, confidence) for variant in variants])
    table["p_adjusted"] = adjust(table["p_value"], correction)
    table["significant"] = table["p_adjusted"] < 1 - confidence
    table = table.sort_values("mean", ascending=direction == "minimize",
                              na_position="last", kind="stable").reset_index(drop=True)
    table.attrs.update(metric=metric, by=by, confidence=confidence, direction=direction, baseline=label(base.keys),
                       baseline_keys=base.keys,
                       correction=correction, comparisons=int(table["p_value"].notna().sum()))
    return table


def _variants(df: pd.DataFrame, by: list[str], metric: str) -> list[Variant]:
    tuned = [c for c in df.columns if c.startswith(TUNED) and df[c].notna().any()]  # not another group's
    variants = []
    for key, runs in df.groupby(by, sort=False, dropna=False):
        finished = runs[is_finished(runs)]
        seeds = finished["seed"].to_numpy() if "seed" in df else np.full(len(finished), np.nan)
        values = pd.Series(pd.to_numeric(finished[metric], errors="coerce").to_numpy(), index=seeds)
        counts = runs["status"].value_counts()
        variants.append(Variant(dict(zip(by, key)), values.dropna(),
                                {column: int(counts.get(s, 0)) for s, column in COUNTED.items()},
                                {c: next(iter(runs[c].dropna()), np.nan) for c in tuned}))
    return variants


NO_TEST = {"ci_low": np.nan, "ci_high": np.nan, "test": None, "p_value": np.nan, "d_z": np.nan, "g": np.nan,
           "n_lower": np.nan, "n_higher": np.nan}
BASELINE_TEST = {"diff": 0.0, **NO_TEST}  # vs itself


def _row(variant: Variant, base: Variant, confidence: float) -> dict:
    values, is_base = variant.values, variant is base
    test = BASELINE_TEST if is_base else t_test(values, base.values, confidence)
    interval = {key: test[key] for key in ("diff", "ci_low", "ci_high")}
    relative = {f"rel_{key}": value / abs(base.values.mean()) for key, value in interval.items()}
    return {**variant.keys, **variant.tuned, "n": len(values), "mean": values.mean(), "std": values.std(ddof=1),
            "min": values.min(), "max": values.max(), **interval, **relative, "test": test["test"],
            "p_value": test["p_value"], "p_adjusted": np.nan, "significant": False, "d_z": test["d_z"],
            "g": test["g"], "n_lower": test["n_lower"], "n_higher": test["n_higher"], "baseline": is_base,
            **variant.counts}


def t_test(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> dict:
    """mean(a) - mean(b) as `diff`, its `confidence` interval `ci_low`/`ci_high`, the `test` and its `p_value`.

    When a and b hold the runs of the same seeds (indexed by seed, each once, two or more) the runs pair up
    and the test is the paired t-test on the per-seed differences (scipy's ttest_rel), which removes what the
    seed does to both; otherwise Welch's t-test (ttest_ind, unequal variances). The intervals are scipy's
    `confidence_interval` of each. With fewer than two runs a side the test, interval and p-value are missing;
    with no spread at all (identical runs: t undefined) the interval, p-value and effect size.
    Also the test's effect size (`d_z` paired, `g` Welch) and, paired, `n_lower` / `n_higher` seeds.
    """
    result = {"diff": a.mean() - b.mean(), **NO_TEST}
    if len(a) < 2 or len(b) < 2:
        return result
    paired = _same_seeds(a, b)
    t = stats.ttest_rel(a, b[a.index]) if paired else stats.ttest_ind(a, b, equal_var=False)
    result["test"] = "paired" if paired else "welch"
    if paired:
        differences = a - b[a.index]
        result.update(n_lower=int((differences < 0).sum()), n_higher=int((differences > 0).sum()))
    if np.isfinite(t.statistic):
        interval = t.confidence_interval(confidence)
        result.update(ci_low=float(interval.low), ci_high=float(interval.high), p_value=float(t.pvalue))
        if paired:
            result["d_z"] = cohens_dz(differences)
        else:
            result["g"] = hedges_g(a, b)
    return result


def cohens_dz(differences: pd.Series) -> float:
    """Cohen's d_z: the mean of paired differences over their standard deviation (ddof=1)."""
    return float(differences.mean() / differences.std(ddof=1))


def hedges_g(a: pd.Series, b: pd.Series) -> float:
    """Hedges' g of mean(a) - mean(b): Cohen's d over the pooled standard deviation, times the exact small-sample
    correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = n_a + n_b - 2 (Hedges 1981)."""
    df = len(a) + len(b) - 2
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / df)
    correction = np.exp(gammaln(df / 2) - gammaln((df - 1) / 2)) / np.sqrt(df / 2)
    return float((a.mean() - b.mean()) / pooled * correction)


def _same_seeds(a: pd.Series, b: pd.Series) -> bool:
    return a.index.notna().all() and a.index.is_unique and b.index.is_unique and set(a.index) == set(b.index)


def adjust(p_values: pd.Series, correction: str) -> pd.Series:
    """The p-values corrected for their number by `correction` (a CORRECTIONS name); NaN ones are not counted."""
    method = CORRECTIONS[correction][0]
    tested = p_values.dropna()
    if method is None or tested.empty:
        return p_values.astype(float)
    return pd.Series(multipletests(tested, method=method)[1], index=tested.index).reindex(p_values.index)


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
        if all(same_value(variant[k], v) for k, v in wanted.items()):
            return i
    raise NanolabError(f"baseline {label(wanted)}: no such variant; variants: "
                       + "; ".join(label(k) for k in keys))


def same_value(value: Any, wanted: Any) -> bool:
    """Equal, or equal as text or as numbers (a baseline typed on the command line is text); a null config value
    (None) equals the NaN that pandas makes of it."""
    if value == wanted or str(value) == str(wanted) or (_null(value) and _null(wanted)):
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


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
                   if c.split(".")[0] not in (*CONFIG_SECTIONS, TUNED[:-1]) and c != "seed"]
        raise NanolabError(f"unknown metric {metric!r}{did_you_mean(closest(metric, metrics))}; "
                           f"metrics: {', '.join(metrics) or 'none'}")


def did_you_mean(hint: str | None) -> str:
    return f" (did you mean {hint!r}?)" if hint else ""
