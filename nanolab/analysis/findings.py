"""Findings: a sentence per comparison, written from a `compare` table's numbers, so prose cannot say more than
its table. The only place such sentences are made; reports print them and the README quotes them.

    for sentence in findings(compare(runs, ["model.norm", "model.norm_placement"], baseline=("layernorm", "pre"))):
        print(sentence)
    # rmsnorm/pre: +0.0011 [-0.0028, +0.0050] vs layernorm/pre, paired over 3 seeds, d_z +0.72, Holm p 0.341: not
    # significant, higher in 2 of 3 seeds, lower in 1          (docs/results/norm)

A sentence carries the direction and size of the difference with its interval, the test and its n, the
standardized effect size, the corrected p-value and whether it survives the correction, and for a paired test how
many seeds point which way. Equivalence is claimed only with a `margin` and only where the whole interval lies
inside +-margin; a difference that is not significant is otherwise "not shown", never "no difference".
`target_finding` says how many runs met a target (at or below it when minimizing), with enough digits to tell a
value from the target.
"""

from __future__ import annotations

import pandas as pd

CORRECTED = {"holm": "Holm p", "bh": "Benjamini-Hochberg p", "none": "p (uncorrected)"}  # correction -> words


def findings(table: pd.DataFrame, margin: float | None = None) -> list[str]:
    """One sentence per compared variant of a `compare` table, in the table's order (the baseline has none)."""
    by, base = table.attrs["by"], table[table["baseline"]].iloc[0]
    return [finding(row, name(base, by), table.attrs, margin) for _, row in table.iterrows() if not row["baseline"]]


def name(row: pd.Series, by: list[str]) -> str:
    """A variant by its values: 'relu', or 'rmsnorm/pre' when several keys define it."""
    return "/".join(str(row[key]) for key in by)


def finding(row: pd.Series, base: str, attrs: dict, margin: float | None = None) -> str:
    """'rmsnorm/post: +0.0263 [-0.0040, +0.0567] vs layernorm/pre, paired over 3 seeds, d_z +2.16, Holm p 0.194:
    not significant, higher in every seed' (see the module's doc)."""
    head = f"{name(row, attrs['by'])}: {row['diff']:+.4f}"
    if pd.isna(row["p_value"]):
        why = "fewer than two runs a side" if pd.isna(row["test"]) else "no spread in the runs"
        return f"{head} vs {base}, no test ({why})"
    effect = f"d_z {row['d_z']:+.2f}" if row["test"] == "paired" else f"Hedges' g {row['g']:+.2f}"
    n = f"paired over {row['n']} seeds" if row["test"] == "paired" else f"Welch over {row['n']} runs"
    p = f"{CORRECTED[attrs['correction']]} {row['p_adjusted']:.3g}"
    interval = f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    return f"{head} {interval} vs {base}, {n}, {effect}, {p}: {verdict(row, attrs, margin)}"


def verdict(row: pd.Series, attrs: dict, margin: float | None) -> str:
    """Whether the difference survives the correction (or lies inside a margin), then its direction: over the
    seeds for a paired test, of the means for Welch's."""
    if row["significant"]:
        said = "significant"
    elif margin is not None and -margin < row["ci_low"] and row["ci_high"] < margin:
        said = f"equivalent within ±{margin:g} (the interval lies inside it)"
    else:
        said = "not significant" + (f", not shown within ±{margin:g}" if margin is not None else "")
    return f"{said}, {seeds(row)}"


def seeds(row: pd.Series) -> str:
    """'lower in every seed' / 'lower in 2 of 3 seeds, higher in 1' for a paired test; 'lower mean' for Welch's."""
    if row["test"] != "paired":
        return ("lower" if row["diff"] < 0 else "higher") + " mean"
    n, lower, higher = int(row["n"]), int(row["n_lower"]), int(row["n_higher"])
    counts = sorted([(count, word) for count, word in [(lower, "lower"), (higher, "higher"),
                                                        (n - lower - higher, "equal")] if count],
                    key=lambda pair: -pair[0])  # the most seeds first
    if len(counts) == 1:
        return f"{counts[0][1]} in every seed"
    (first, word), rest = counts[0], counts[1:]
    return f"{word} in {first} of {n} seeds, " + ", ".join(f"{w} in {c}" for c, w in rest)


def target_finding(values: pd.Series, target: float, direction: str = "minimize") -> str:
    """How many of the runs met `target` (at or below it when minimizing): '1 of 3 seeds at or below 1.9 (seed 3:
    1.8979); mean 1.9053'. `values` is indexed by seed; a value is shown with the digits that tell it from the
    target (1.9000044, not 1.9000)."""
    below = direction == "minimize"
    met = values[values <= target] if below else values[values >= target]
    word = "at or below" if below else "at or above"
    listed = ", ".join(f"seed {seed}: {_apart(value, target)}" for seed, value in values.items())
    return (f"{len(met)} of {len(values)} seeds {word} {target:g} ({listed}); mean {_apart(values.mean(), target)}")


def _apart(value: float, target: float) -> str:
    """`value` to 4 decimals, or to as many more as it takes to differ from `target` (up to 12)."""
    for decimals in range(4, 13):
        shown = f"{value:.{decimals}f}"
        if value == target or float(shown) != target:
            return shown
    return repr(value)
