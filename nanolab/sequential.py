"""Sequential seeds: the statistics that decide, after each round of seeds, which variants of an ablation are
better, worse or equivalent to the baseline, with the family-wise error held at `fwer` across looks and variants.

    seeds: {min: 2, max: 10, step: 1}      # looks at 2, 3, ..., 10 seeds (the last look is always at max)
    decide: {metric: best/val_loss, fwer: 0.05, margin: 0.01, spending: obf, futility: 0.4}

The method (docs/sequential.md says why each choice):
- Each variant is compared with the baseline by the paired t statistic of its per-seed differences. Look k at n_k
  seeds has information fraction n_k / max.
- Two-sided group-sequential boundaries c_k(a) on |t| spend a Lan-DeMets function of the information
  (obf: O'Brien-Fleming-like, pocock: Pocock-like). The paired t statistic is a pivot under the null, so the
  boundaries are quantiles of its exact joint law over the looks, drawn once from a frozen generator
  (`t_boundaries`): valid at 2 seeds (1 degree of freedom), where z boundaries mapped to t are not.
- Across variants: Holm over the variants, each tested at its own spending function (Maurer & Bretz 2013's
  graphical approach with the Holm graph). A variant is rejected at level fwer/(m - r), r the variants already
  rejected, when its statistic has crossed that level's boundary at any of its looks. This equals Holm on the
  repeated p-values, a closed test of weighted-Bonferroni group-sequential tests: strong FWER control whatever
  the correlation (the variants share the baseline's runs).
- Equivalence (with `margin`): the repeated confidence interval at level fwer/m (simultaneous over looks and
  variants) lies inside +-margin. It stops a variant without rejecting it: a non-binding stop that only removes
  chances to reject, so the efficacy FWER stays controlled.
- Futility (with `margin` and `futility`): the variant's interval at this look alone, at confidence 1 - futility,
  lies inside +-margin: a difference as large as the margin has become unlikely, so its seeds are better spent
  elsewhere. A stop, not a claim of equivalence (the interval is neither simultaneous nor at the fwer level), and
  non-binding like equivalence: the FWER holds whatever the level; the price is power, which
  benchmarks/sequential.py measures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from nanolab.config import ConfigError
from nanolab.vocab import BEST_VAL_LOSS, SUMMARY_METRICS

SPENDING = {  # cumulative two-sided alpha spent by information fraction t (Lan & DeMets 1983)
    "obf": lambda t, a: 2 * stats.norm.sf(stats.norm.isf(a / 2) / np.sqrt(t)),
    "pocock": lambda t, a: a * np.log1p((np.e - 1) * t),
}
DECISIONS = ("undecided", "better", "worse", "equivalent", "futile")  # the codes 0..4 of `sequence`


@dataclass(frozen=True)
class SeedDesign:
    """`seeds: {min, max, step}`: seeds 1..max, looked at after min, min + step, ... seeds and at max."""

    min: int = 2
    max: int = 10
    step: int = 1

    def __post_init__(self):
        if self.min < 2:
            raise ConfigError("seeds.min", self.min, "must be >= 2 (a paired t statistic needs two seeds)")
        if self.max < self.min:
            raise ConfigError("seeds.max", self.max, f"must be >= seeds.min ({self.min})")
        if self.step < 1:
            raise ConfigError("seeds.step", self.step, "must be >= 1")

    @property
    def looks(self) -> tuple[int, ...]:
        return tuple(sorted({*range(self.min, self.max + 1, self.step), self.max}))


@dataclass(frozen=True)
class Decide:
    """An ablation file's `decide:` block."""

    metric: str = BEST_VAL_LOSS
    fwer: float = 0.05
    margin: float | None = None  # the smallest difference that matters, in the metric's units: equivalence, futility
    spending: str = "obf"
    direction: str = "minimize"
    futility: float | None = None  # with margin: stop a variant whose (1 - futility) interval lies inside it

    def __post_init__(self):
        if self.metric not in SUMMARY_METRICS:
            raise ConfigError("metric", self.metric, f"expected a figure of a run's summary.json: "
                              f"{', '.join(SUMMARY_METRICS)}")
        if not 0 < self.fwer < 0.5:
            raise ConfigError("fwer", self.fwer, "expected a family-wise error rate in (0, 0.5)")
        if self.margin is not None and not self.margin > 0:
            raise ConfigError("margin", self.margin, "expected a difference > 0 in the metric's units (or leave "
                              "it out: no equivalence stops)")
        if self.spending not in SPENDING:
            raise ConfigError("spending", self.spending, f"expected one of {', '.join(SPENDING)} (Lan-DeMets "
                              "O'Brien-Fleming or Pocock)")
        if self.direction not in ("minimize", "maximize"):
            raise ConfigError("direction", self.direction, "expected minimize or maximize")
        if self.futility is not None and not (0 < self.futility < 1 and self.margin is not None):
            raise ConfigError("futility", self.futility, "expected a level in (0, 1), with a margin: a variant stops "
                              "when its (1 - futility) interval lies inside +-margin (or leave it out)")


@dataclass(frozen=True)
class Design:
    seeds: SeedDesign = field(default_factory=SeedDesign)
    decide: Decide = field(default_factory=Decide)

    def bounds(self, alpha: float) -> np.ndarray:
        """The |t| boundary of every look at two-sided level `alpha`."""
        return t_boundaries(self.seeds.looks, float(alpha), self.decide.spending)

    def levels(self, m: int) -> np.ndarray:
        """Holm's levels with r variants rejected, r = 0..m-1: fwer / (m - r)."""
        return self.decide.fwer / (m - np.arange(m))


NULL_DRAWS = 2**18  # null sequences that calibrate the boundaries: their level is exact to about +-0.0005
NULL_SEED = 20250  # RandomState's stream is frozen across numpy versions: the same boundaries everywhere


@functools.lru_cache(maxsize=8)
def null_t(looks: tuple[int, ...]) -> np.ndarray:
    """|t| at each look of NULL_DRAWS sequences of Gaussian per-seed differences of mean 0: the paired t
    statistic is a pivot (its law is free of the seed spread), so these draws are its joint law over the looks."""
    draws = np.random.RandomState(NULL_SEED).standard_normal((NULL_DRAWS, looks[-1]))
    return np.abs(np.stack([paired_t(draws[:, :n])[2] for n in looks], axis=1)).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def t_boundaries(looks: tuple[int, ...], alpha: float, spending: str) -> np.ndarray:
    """Two-sided boundaries c_k on |t| (n_k - 1 degrees of freedom) such that, under the null, the first crossing
    happens at look k with probability spent(n_k / max) - spent(n_{k-1} / max); np.inf where nothing is spent.

    The Brownian-motion recursion that gives z boundaries does not hold for t statistics at 1 or 2 degrees of
    freedom (mapping its boundaries to t at equal tail probability let 5.7% false positives through at a stated
    5%, in the simulation of docs/sequential.md), so the boundaries are the conditional quantiles of the exact
    joint null law, drawn once (`null_t`)."""
    spent = SPENDING[spending](np.array(looks) / looks[-1], alpha)
    stats_ = null_t(looks)
    alive = np.ones(len(stats_), dtype=bool)
    bounds = []
    for k, target in enumerate(np.round(spent * len(stats_)).astype(int)):
        count = target - (len(stats_) - alive.sum())
        values = stats_[alive, k]
        bound = np.inf if count <= 0 else float(np.partition(values, len(values) - count)[len(values) - count])
        bounds.append(bound)
        alive &= stats_[:, k] < bound
    return np.array(bounds)


def paired_t(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and t of the per-seed differences along the last axis (a zero spread: t = +-inf,
    or 0 for a zero mean)."""
    mean = diffs.mean(-1)
    se = diffs.std(-1, ddof=1) / np.sqrt(diffs.shape[-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, mean / np.where(se > 0, se, 1), np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
    return mean, se, t


@dataclass
class Trajectory:
    """What `sequence` decided: per (batch, variant) the decision code (DECISIONS) and the look index it was
    made at (-1: undecided); per batch the runs used (variants' and baseline's seeds)."""

    code: np.ndarray
    look: np.ndarray
    runs: np.ndarray


def sequence(design: Design, diffs: np.ndarray, looks: int | None = None) -> Trajectory:
    """Run the design's looks (the first `looks` of them; default all) over per-seed differences `diffs`,
    shape (batch, m variants, seeds), variant minus baseline by seed. Seeds a stopped variant never ran may be
    NaN: a variant is looked at only while undecided. Vectorised over the batch: one call simulates thousands
    of ablations; the engine calls it with a batch of one."""
    batch, m, _ = diffs.shape
    looks_n = design.seeds.looks[:looks]
    levels = design.levels(m)
    bounds = np.stack([design.bounds(a) for a in levels])  # (Holm step r, look)
    code = np.zeros((batch, m), dtype=int)
    look = np.full((batch, m), -1)
    crossed = np.zeros((batch, m, m), dtype=bool)  # crossed[..., r]: crossed Holm step r's boundary at some look
    runs = np.zeros(batch, dtype=int)
    sign = 1 if design.decide.direction == "minimize" else -1
    margin, futility = design.decide.margin, design.decide.futility
    previous = 0
    for k, n in enumerate(looks_n):
        active = code == 0
        runs += (n - previous) * (active.sum(-1) + active.any(-1))
        previous = n
        mean, se, t = paired_t(np.where(active[..., None], diffs[..., :n], 0.0))
        crossed |= active[..., None] & (np.abs(t)[..., None] >= bounds[None, None, :, k]) & np.isfinite(bounds[:, k])
        rejected = (code == 1) | (code == 2)
        for _ in range(m):  # Holm's steps: each rejection lowers the bar for the rest
            r = rejected.sum(-1, keepdims=True)
            step = np.take_along_axis(crossed, np.minimum(r, m - 1)[..., None], -1)[..., 0]
            new = active & ~rejected & step
            if not new.any():
                break
            rejected |= new
            code[new] = np.where(sign * mean[new] < 0, 1, 2)
        if margin is not None:
            with np.errstate(invalid="ignore"):  # a look that spends nothing has an infinite bound: inf * 0 se
                code[active & (code == 0) & (np.abs(mean) + bounds[0, k] * se < margin)] = 3
        if futility is not None:
            code[active & (code == 0) & (np.abs(mean) + stats.t.isf(futility / 2, n - 1) * se < margin)] = 4
        look[active & (code != 0)] = k
    return Trajectory(code, look, runs)


def repeated_p(design: Design, t_by_look: list[float]) -> float:
    """The repeated p-value (Jennison & Turnbull 2000, 9.2): the smallest level whose boundaries the variant's
    |t| crossed at one of its looks. Holm over these gives the decisions of `sequence`."""
    best = 1.0
    for k, t in enumerate(t_by_look):
        def gap(log_a):
            return design.bounds(np.exp(log_a))[k] - abs(t)

        low, high = np.log(1e-6), np.log(0.5)  # finer than 1e-6 the draws cannot tell levels apart
        if gap(high) > 0:
            continue
        best = min(best, 1e-6 if gap(low) <= 0 else float(np.exp(optimize.brentq(gap, low, high, xtol=1e-4))))
    return best


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values."""
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out
