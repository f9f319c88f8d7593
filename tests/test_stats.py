"""compare's statistics: the paired and Welch t-tests against scipy's own, which test is chosen, Holm and
Benjamini-Hochberg against tables checked by hand, significance on the adjusted p-value, the relative difference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import write_ablation
from scipy import stats
from statsmodels.stats.multitest import multipletests

from nanolab.analysis import caption, compare, compare_command, format_table
from nanolab.analysis.findings import findings, target_finding
from nanolab.analysis.stats import adjust
from nanolab.cli import main
from nanolab.errors import NanolabError
from nanolab.vocab import BEST_VAL_LOSS, EXIT_USAGE, RunStatus

FINISHED, FAILED = RunStatus.FINISHED.value, RunStatus.FAILED.value
BASE = [2.00, 2.10, 2.20]  # seeds 1, 2, 3


def frame(variants: dict[str, tuple[list[float], list[int]]]) -> pd.DataFrame:
    """Runs of model.activation = each key: its values of best/val_loss at its seeds, the baseline's (BASE) first."""
    rows = [{"run_id": f"{name}-s{seed}", "model.activation": name, "seed": seed, "status": FINISHED, BEST_VAL_LOSS: v}
            for name, (values, seeds) in {"base": (BASE, [1, 2, 3]), **variants}.items()
            for v, seed in zip(values, seeds)]
    return pd.DataFrame(rows)


def row(table: pd.DataFrame, variant: str) -> pd.Series:
    return table.set_index("model.activation").loc[variant]


def shifted(by: list[float]) -> list[float]:
    """BASE + `by`, seed by seed."""
    return list(np.add(BASE, by))


# ----------------------------------------------------------------------------- the tests against scipy


def test_runs_of_the_same_seeds_are_compared_by_the_paired_test():
    variant = shifted([-0.10, -0.15, -0.08])
    # the variant's rows come in another seed order: they pair up by seed, not by position
    table = compare(frame({"x": ([variant[2], variant[0], variant[1]], [3, 1, 2])}), "model.activation",
                    baseline="base", confidence=0.9)
    x = row(table, "x")
    expected = stats.ttest_rel(variant, BASE)
    interval = expected.confidence_interval(0.9)
    assert x["test"] == "paired"
    assert x["diff"] == pytest.approx(np.mean(variant) - np.mean(BASE)) == pytest.approx(-0.11)
    assert (x["ci_low"], x["ci_high"], x["p_value"]) == (pytest.approx(interval.low), pytest.approx(interval.high),
                                                         pytest.approx(expected.pvalue))
    assert x["p_value"] == pytest.approx(0.0339969)


def test_runs_of_other_seeds_are_compared_by_welchs_test():
    variant = shifted([-0.10, -0.15, -0.08])
    table = compare(frame({"x": (variant, [1, 2, 4])}), "model.activation", baseline="base", confidence=0.9)
    x = row(table, "x")
    expected = stats.ttest_ind(variant, BASE, equal_var=False)
    interval = expected.confidence_interval(0.9)
    assert x["test"] == "welch"
    assert (x["diff"], x["ci_low"], x["ci_high"], x["p_value"]) == (
        pytest.approx(-0.11), pytest.approx(interval.low), pytest.approx(interval.high), pytest.approx(expected.pvalue))


@pytest.mark.parametrize("seeds, base_seeds, test", [
    ([1, 2, 3], [1, 2, 3], "paired"),
    ([3, 2, 1], [1, 2, 3], "paired"),  # the same set, in another order
    ([1, 2, 4], [1, 2, 3], "welch"),
    ([1, 2], [1, 2, 3], "welch"),  # a subset is not the same set
    ([1, 1, 2], [1, 1, 2], "welch"),  # a seed twice: the runs do not pair up one to one
    (None, None, "welch"),  # no seed column at all
])
def test_the_paired_test_exactly_when_the_seeds_match(seeds, base_seeds, test):
    runs = frame({"x": ([1.9, 2.0, 2.3], seeds or [1, 2, 3])})
    if seeds is None:
        runs = runs.drop(columns="seed")
    else:
        runs.loc[runs["model.activation"] == "base", "seed"] = base_seeds
    assert row(compare(runs, "model.activation", baseline="base"), "x")["test"] == test


def test_seeds_are_those_of_the_finished_runs():
    failed = {"run_id": "x-s4", "model.activation": "x", "seed": 4, "status": FAILED, BEST_VAL_LOSS: 0.1}
    runs = pd.concat([frame({"x": ([1.9, 2.0, 2.3], [1, 2, 3])}), pd.DataFrame([failed])], ignore_index=True)
    x = row(compare(runs, "model.activation", baseline="base"), "x")
    assert x["test"] == "paired" and x["n"] == 3 and x["n_failed"] == 1


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on the runs without spread
def test_fewer_than_two_runs_or_no_spread_give_no_p_value_and_no_comparison():
    # 0.25 and its multiples are exact in binary: the per-seed differences are exactly equal, t is 0/0 or x/0
    runs = frame({"one": ([1.9], [1]), "shift": ([1.25, 1.75, 2.25], [1, 2, 3]), "x": ([1.9, 2.0, 2.3], [1, 2, 3])})
    runs.loc[runs["model.activation"] == "base", BEST_VAL_LOSS] = [1.0, 1.5, 2.0]
    table = compare(runs, "model.activation", baseline="base")
    one, shift = row(table, "one"), row(table, "shift")
    assert pd.isna(one["test"]) and pd.isna(one["p_value"]) and one["diff"] == pytest.approx(0.4)
    assert shift["test"] == "paired" and shift["diff"] == 0.25
    assert pd.isna(shift["ci_low"]) and pd.isna(shift["p_value"]) and pd.isna(shift["p_adjusted"])
    assert not shift["significant"] and table.attrs["comparisons"] == 1  # x alone


# ----------------------------------------------------------------------------- corrections


RAW = [0.01, 0.04, 0.03, 0.20]
# Holm (m = 4): sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.20; then the running maximum
# (an adjusted p never falls below a smaller p's): 0.04, 0.09, 0.09, 0.20; back in the original order:
HOLM = [0.04, 0.09, 0.09, 0.20]
# Benjamini-Hochberg: sorted p x m / rank = 0.01 x 4/1, 0.03 x 4/2, 0.04 x 4/3, 0.20 x 4/4 = 0.04, 0.06, 0.0533, 0.20;
# then the running minimum from the largest down: 0.20, 0.0533, min(0.06, 0.0533) = 0.0533, 0.04; in order:
BH = [0.04, 0.16 / 3, 0.16 / 3, 0.20]


@pytest.mark.parametrize("correction, expected", [("holm", HOLM), ("bh", BH), ("none", RAW)])
def test_adjusted_p_values_match_the_table_checked_by_hand(correction, expected):
    assert list(adjust(pd.Series(RAW), correction)) == pytest.approx(expected)
    with_untested = adjust(pd.Series([RAW[0], np.nan, *RAW[1:]]), correction)  # NaN: not a comparison
    assert list(with_untested.dropna()) == pytest.approx(expected) and np.isnan(with_untested[1])


SIGNIFICANT_ALONE = {"x": (shifted([-0.10, -0.15, -0.08]), [1, 2, 3]),  # p 0.034, its interval excludes 0
                     "y": (shifted([0.05, -0.05, 0.03]), [1, 2, 3]),  # p 0.77
                     "z": (shifted([0.10, -0.10, 0.05]), [1, 2, 3]),  # p 0.81
                     "one": ([2.0], [1])}  # no p-value: not a comparison


def test_significance_follows_the_adjusted_p_value():
    table = compare(frame(SIGNIFICANT_ALONE), "model.activation", baseline="base")
    x = row(table, "x")
    assert x["p_value"] < 0.05 and x["ci_high"] < 0  # alone, it would be significant
    assert x["p_adjusted"] == pytest.approx(3 * x["p_value"]) == pytest.approx(0.102, abs=1e-4)  # Holm: 0.034 x 3
    assert not x["significant"] and not table["significant"].any()
    tested = table["p_value"].notna()
    assert list(table.loc[tested, "p_adjusted"]) == pytest.approx(
        list(multipletests(table.loc[tested, "p_value"], method="holm")[1]))
    assert table.attrs["correction"] == "holm" and table.attrs["comparisons"] == 3
    uncorrected = compare(frame(SIGNIFICANT_ALONE), "model.activation", baseline="base", correction="none")
    assert row(uncorrected, "x")["significant"] and row(uncorrected, "x")["p_adjusted"] == x["p_value"]
    lines = format_table(table).splitlines()
    assert next(line for line in lines if line.split()[0] == "x").split()[-3:] == ["paired", "0.034", "0.102"]  # no *


@pytest.mark.parametrize("correction, words", [("holm", "Holm-corrected over 3 comparisons"),
                                               ("bh", "Benjamini-Hochberg-corrected over 3 comparisons"),
                                               ("none", "not corrected for 3 comparisons")])
def test_the_caption_says_which_correction_over_how_many_comparisons(correction, words):
    table = compare(frame(SIGNIFICANT_ALONE), "model.activation", baseline="base", correction=correction)
    assert caption(table, 10, 10, "runs/").splitlines()[2] == (
        f"rel diff = diff / baseline mean; d_z = Cohen's d_z (mean paired difference / its sd); p adj: p {words}; "
        "* = p adj < 0.05")


def test_a_bad_correction_is_one_line_and_exit_2(tmp_path, capsys):
    write_ablation(tmp_path)
    assert main(["compare", str(tmp_path), "--correction", "bonferroni"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.endswith("error: --correction bonferroni: expected holm (Holm-Bonferroni, the default), "
                        "bh (Benjamini-Hochberg) or none\n") and err.count("\n") == 1, err
    with pytest.raises(NanolabError, match="--correction fdr"):
        compare_command(tmp_path, correction="fdr")


# ----------------------------------------------------------------------------- the effect size


def test_the_relative_difference_is_the_difference_over_the_baseline_mean():
    table = compare(frame({"x": (shifted([-0.10, -0.20, -0.30]), [1, 2, 3])}), "model.activation", baseline="base")
    x = row(table, "x")
    assert x["rel_diff"] == pytest.approx(x["diff"] / np.mean(BASE)) == pytest.approx(-0.2 / 2.1)
    assert (x["rel_ci_low"], x["rel_ci_high"]) == (pytest.approx(x["ci_low"] / 2.1), pytest.approx(x["ci_high"] / 2.1))
    # diff -0.2 over 2.1 = -9.5%; the paired interval [-0.4484, +0.0484] over 2.1 = [-21.4%, +2.3%]
    assert "-9.5% [-21.4%, +2.3%]" in format_table(table)


def test_another_groups_tuned_values_add_no_column():
    # load_runs over a root that also holds a tuned ablation gives every run a tuned.* column, NaN in other groups
    runs = frame({"x": (shifted([-0.1, -0.12, -0.08]), [1, 2, 3])})
    table = compare(runs.assign(**{"tuned.train.lr": np.nan}), "model.activation", baseline="base")
    assert not [c for c in table.columns if c.startswith("tuned")]
    tuned = compare(runs.assign(**{"tuned.train.lr": 0.004}), "model.activation", baseline="base")
    assert list(tuned["tuned.train.lr"]) == [0.004, 0.004]


# ----------------------------------------------------------------------------- standardized effect sizes


def test_cohens_dz_of_a_paired_test_is_scipys_t_over_root_n_and_the_seed_counts_are_the_signs():
    variant = shifted([-0.10, 0.05, -0.08])
    x = row(compare(frame({"x": (variant, [1, 2, 3])}), "model.activation", baseline="base"), "x")
    t = stats.ttest_rel(variant, BASE).statistic
    assert x["d_z"] == pytest.approx(t / np.sqrt(3), rel=1e-12)
    assert x["d_z"] == pytest.approx(np.mean([-0.10, 0.05, -0.08]) / np.std([-0.10, 0.05, -0.08], ddof=1))
    assert np.isnan(x["g"]) and (x["n_lower"], x["n_higher"]) == (2, 1)


def test_hedges_g_of_a_welch_test_is_the_pooled_d_times_the_exact_small_sample_factor():
    variant = [1.7, 1.9, 2.05, 1.8]
    x = row(compare(frame({"x": (variant, [4, 5, 6, 7])}), "model.activation", baseline="base"), "x")
    # an independent route: Student's pooled t times sqrt(1/na + 1/nb) is Cohen's d; J(5) from its closed form
    d = stats.ttest_ind(variant, BASE, equal_var=True).statistic * np.sqrt(1 / 4 + 1 / 3)
    j5 = 3 * np.sqrt(np.pi) / 4 / np.sqrt(5 / 2)  # Gamma(5/2) / (sqrt(5/2) Gamma(2)), Gamma(5/2) = 3 sqrt(pi) / 4
    assert j5 == pytest.approx(0.8407, abs=1e-4)  # close to Hedges' approximation 1 - 3 / (4 df - 1) = 0.842
    assert x["g"] == pytest.approx(d * j5, rel=1e-12)
    assert x["test"] == "welch" and np.isnan(x["d_z"]) and np.isnan(x["n_lower"])


def test_the_table_names_each_effect_size_by_its_test():
    paired = compare(frame({"x": (shifted([-0.10, 0.05, -0.08]), [1, 2, 3])}), "model.activation", baseline="base")
    mixed = compare(frame({"x": (shifted([-0.10, 0.05, -0.08]), [1, 2, 3]), "y": ([1.7, 1.9], [8, 9])}),
                    "model.activation", baseline="base")
    assert "d_z" in format_table(paired).splitlines()[0] and " g " not in format_table(paired).splitlines()[0]
    header = format_table(mixed).splitlines()[0].split()
    assert header[header.index("d_z") + 1] == "g"
    assert "d_z = Cohen's d_z" in caption(mixed, 8, 8, "runs/") and "g = Hedges' g" in caption(mixed, 8, 8, "runs/")


# ----------------------------------------------------------------------------- findings: sentences from the numbers


def test_a_finding_carries_direction_interval_test_effect_size_correction_and_seeds():
    table = compare(frame({"x": (shifted([-0.10, -0.15, -0.08]), [1, 2, 3]), "y": (shifted([0.01, -0.02, 0.03]),
                                                                                      [1, 2, 3])}),
                    "model.activation", baseline="base")
    x, y = row(table, "x"), row(table, "y")
    assert findings(table) == [
        f"x: -0.1100 [{x['ci_low']:+.4f}, {x['ci_high']:+.4f}] vs base, paired over 3 seeds, d_z {x['d_z']:+.2f}, "
        f"Holm p {x['p_adjusted']:.3g}: {'significant' if x['significant'] else 'not significant'}, "
        "lower in every seed",
        f"y: +0.0067 [{y['ci_low']:+.4f}, {y['ci_high']:+.4f}] vs base, paired over 3 seeds, d_z {y['d_z']:+.2f}, "
        f"Holm p {y['p_adjusted']:.3g}: not significant, higher in 2 of 3 seeds, lower in 1"]


def test_equivalence_only_where_the_whole_interval_lies_inside_the_margin():
    table = compare(frame({"y": (shifted([0.001, -0.002, 0.003]), [1, 2, 3])}), "model.activation", baseline="base")
    y = row(table, "y")
    assert findings(table)[0].endswith(": not significant, higher in 2 of 3 seeds, lower in 1")
    inside = max(abs(y["ci_low"]), abs(y["ci_high"])) * 1.01
    assert findings(table, margin=inside)[0].endswith(
        f": equivalent within ±{inside:g} (the interval lies inside it), higher in 2 of 3 seeds, lower in 1")
    assert findings(table, margin=abs(y["ci_high"]) * 0.99)[0].endswith(
        f": not significant, not shown within ±{abs(y['ci_high']) * 0.99:g}, higher in 2 of 3 seeds, lower in 1")


def test_welch_findings_name_hedges_g_and_missing_tests_say_why():
    table = compare(frame({"x": ([1.7, 1.9, 2.05], [4, 5, 6]), "z": ([2.5], [1])}), "model.activation",
                    baseline="base", correction="none")
    x = row(table, "x")
    assert findings(table) == [
        f"x: {x['diff']:+.4f} [{x['ci_low']:+.4f}, {x['ci_high']:+.4f}] vs base, Welch over 3 runs, Hedges' g "
        f"{x['g']:+.2f}, p (uncorrected) {x['p_adjusted']:.3g}: not significant, lower mean",
        "z: +0.4000 vs base, no test (fewer than two runs a side)"]


def test_a_target_finding_counts_the_seeds_that_met_it_with_the_digits_that_tell_them_apart():
    # the issue's cases: the README's "met by seed 1" was 1.9000044, and one seed of 1.905 +- 0.008 did reach 1.90
    assert target_finding(pd.Series([1.9000044, 1.9279], index=[1, 2]), 1.9) == (
        "0 of 2 seeds at or below 1.9 (seed 1: 1.900004, seed 2: 1.9279); mean 1.9140")
    assert target_finding(pd.Series([1.9045, 1.9135, 1.8979], index=[1, 2, 3]), 1.9) == (
        "1 of 3 seeds at or below 1.9 (seed 1: 1.9045, seed 2: 1.9135, seed 3: 1.8979); mean 1.9053")
