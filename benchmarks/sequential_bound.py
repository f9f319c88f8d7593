"""What sequential seeds could save at the design effect if the seed-to-seed sd (sigma) were known (issue #25).

    python benchmarks/sequential_bound.py      # ~2 minutes on 2 cores: prints the Markdown tables of NOTES.md

An oracle that knows sigma tests z statistics instead of nanolab's t statistics: no design of nanolab.sequential
needs fewer expected seeds than the oracle's best at the same error and power (but nanolab's fixed design needs
more seeds than the oracle's too, so the ratios printed here do not bound nanolab's ratios). Per seed, a
variant-minus-baseline difference is N(2 sigma, 2 (1 - rho) sigma^2): S_n, the sum of n standardized
differences, is a Gaussian random walk with drift theta = 2 / sqrt(2 (1 - rho)) per seed. An ablation's runs are
every variant's seeds plus the baseline's (as many as the variant that runs longest). Every design is two-sided
with equal tails at FWER 0.05; with several variants (rho 0), each is tested on its own differences at 0.05 / m
(Bonferroni; Holm's fixed design, printed last, needs fewer seeds). Printed, at effect 2 sigma:

- fixed: the fewest seeds whose z-test has power >= 80%;
- spending: the best design of a family (fewest expected runs with power >= 80%): looks at every seed from min
  (1, 2, 3) to max (n_fixed .. 3 n_fixed), two-sided boundaries on |S| spending a Lan-DeMets function
  (nanolab's obf and pocock, alpha t^r), no stop for "no difference" (futility);
- optimal: the fewest expected seeds per variant of any two-sided design that looks at most once per seed, up to
  3 n_fixed seeds, with error <= 0.05 / m and power >= 80% (seeds and power averaged over +-2 sigma), without and
  with (binding) futility stops: the Bayes design of the Lagrangian E[seeds] + l0 P0(reject) + l1 P(miss), by
  backward induction, with l0 and l1 solved to make both constraints exact (then, by weak duality, no such design
  has fewer expected seeds);
- finer looks (1 variant, rho 0): the same optimum when looks come every 1/J seed, against the fixed design at a
  real-valued number of seeds; continuous looks: Wald's SPRT on Brownian motion, a lower bound for any design
  (one-sided error 0.025 / m, power 80%; the ratio is scale-free).

Error, power and expected seeds are exact (recursive numerical integration on Simpson grids, Armitage, McPherson &
Rowe 1969); with several variants the baseline's seeds, E[max over variants of seeds], are simulated: designs are
chosen on one set of draws and measured on another (the ± is the standard error).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from nanolab.sequential import SPENDING

SPENDINGS = {**SPENDING, **{f"alpha t^{r:g}": (lambda t, a, r=r: a * t**r) for r in (0.5, 0.75, 1, 1.5, 2, 3)}}
EFFECT, POWER, FWER = 2.0, 0.8, 0.05
STEP = 0.1  # Simpson step on S (one seed's sd is 1): probabilities and seeds are exact to about 1e-6
DP_STEP, DP_REACH = 0.02, 8.0  # backward induction: grid step on S, and the kernel's reach in sds


@dataclass
class Design:
    """After look k (at looks[k] seeds) reject when |S| >= upper[k], stop for "no difference" when |S| <= lower[k],
    else continue; the last look always stops. alpha: P0(reject); power: P(better | theta); seeds: E[seeds | theta]."""

    name: str
    looks: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    alpha: float
    power: float
    seeds: float


def nodes(intervals: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Simpson's nodes and weights over a union of disjoint intervals."""
    xs, ws = [], []
    for lo, hi in intervals:
        n = 2 * max(1, int(np.ceil((hi - lo) / (2 * STEP)))) + 1
        w = np.ones(n)
        w[1:-1:2], w[2:-1:2] = 4, 2
        xs.append(np.linspace(lo, hi, n))
        ws.append(w * (hi - lo) / (3 * (n - 1)))
    return np.concatenate(xs), np.concatenate(ws)


def propagate(x: np.ndarray, wf: np.ndarray, d: float, drift: float, y: np.ndarray) -> np.ndarray:
    """Density at y of S after d more seeds, from the weighted density wf at nodes x."""
    z = (y[:, None] - x[None] - drift * d) / np.sqrt(d)
    return np.exp(-0.5 * z * z) @ wf / np.sqrt(2 * np.pi * d)


def above(x: np.ndarray, wf: np.ndarray, d: float, drift: float, bound: float) -> float:
    """P(S after d more seeds >= bound), from the weighted density wf at nodes x."""
    return float(wf @ special.ndtr((x + drift * d - bound) / np.sqrt(d)))


def evaluate(looks, lower, upper, spent, theta: float) -> tuple[np.ndarray, float, float, float]:
    """(upper, P0(reject), P(better | theta), E[seeds | theta]) of a Design's boundaries; a NaN upper[k] is solved
    so that the null's rejections up to look k add to spent[k]."""
    upper = np.array(upper, dtype=float)
    x, f0, f1 = np.zeros(1), np.ones(1), np.ones(1)  # S = 0 before the first seed; f0 null, f1 at theta
    previous, alpha, power, seeds = 0, 0.0, 0.0, 0.0
    for k, n in enumerate(looks):
        d, previous = n - previous, n
        seeds += d * f1.sum()
        if np.isnan(upper[k]):
            target = spent[k] - alpha
            upper[k] = 0.0 if 2 * above(x, f0, d, 0, 0) <= target else optimize.brentq(
                lambda u: 2 * above(x, f0, d, 0, u) - target, 0, 50 * np.sqrt(n), xtol=1e-12)
        alpha += 2 * above(x, f0, d, 0, upper[k])  # the null density stays symmetric
        power += above(x, f1, d, theta, upper[k])
        if k + 1 < len(looks):
            lo = max(lower[k], 0.0)
            y, w = nodes([(-upper[k], -lo), (lo, upper[k])] if lo > 0 else [(-upper[k], upper[k])])
            x, f0, f1 = y, w * propagate(x, f0, d, 0, y), w * propagate(x, f1, d, theta, y)
    return upper, alpha, power, seeds


def fixed_power(theta: float, alpha: float, n: int) -> float:
    """P(better | theta) of the two-sided z-test at n seeds."""
    return float(stats.norm.sf(stats.norm.isf(alpha / 2) - theta * np.sqrt(n)))


def fixed_seeds(theta: float, alpha: float) -> int:
    n = 1
    while fixed_power(theta, alpha, n) < POWER:
        n += 1
    return n


def spending_designs(theta: float, alpha: float, n_fixed: int, factor: int):
    """The family's designs with power >= 80%."""
    for low, high, name in itertools.product((1, 2, 3), range(n_fixed, factor * n_fixed + 1), SPENDINGS):
        if low <= high:
            looks = np.arange(low, high + 1)
            lower = np.zeros(len(looks))
            upper, error, power, seeds = evaluate(looks, lower, np.full(len(looks), np.nan),
                                                  SPENDINGS[name](looks / high, alpha), theta)
            if power >= POWER:
                yield Design(f"{{min: {low}, max: {high}}} {name}", looks, lower, upper, error, power, seeds)


def continuation(s: np.ndarray, gap: np.ndarray, reject_at: float, futility: bool) -> tuple[float, float]:
    """(lower, upper): the edges of {s >= 0: gap < 0}, gap = cost of going on - cost of stopping, at grid points s
    from 0 (linearly interpolated); an empty set stops every path, with a rejection beyond reject_at."""
    i = np.flatnonzero(np.diff(np.sign(gap)) != 0)
    crossings = s[i] - gap[i] * (s[i + 1] - s[i]) / (gap[i + 1] - gap[i])
    if gap[0] < 0:
        lower, upper = 0.0, crossings[0]
    elif len(crossings) == 0:
        lower = upper = reject_at if futility else 0.0
    else:
        assert futility and len(crossings) == 2, crossings
        lower, upper = crossings
    assert not futility or lower - DP_STEP <= reject_at <= upper + DP_STEP, (crossings, reject_at)
    return lower, upper


def bayes(theta: float, n_max: int, lam0: float, lam1: float, futility: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of the design with looks at 1..n_max seeds that minimises E[seeds] + lam0 P0(reject)
    + lam1 P(miss), seeds and misses averaged over effects +theta and -theta. Costs are per unit of the null
    density of S; the effects enter through their likelihood ratios."""
    reach = n_max * theta / 2 + (abs(np.log(lam0)) + abs(np.log(lam1))) / theta + 3 * DP_REACH  # past every boundary
    half = np.arange(0, reach + DP_STEP / 2, DP_STEP)
    s = np.r_[-half[:0:-1], half]
    kernel = stats.norm.pdf(np.arange(-DP_REACH, DP_REACH + DP_STEP / 2, DP_STEP)) * DP_STEP
    lower, upper, value = np.zeros(n_max), np.zeros(n_max), None
    for n in range(n_max, 0, -1):
        plus, minus = np.exp(theta * s - n * theta**2 / 2), np.exp(-theta * s - n * theta**2 / 2)
        stop = lam0 + lam1 * np.minimum(plus, minus) / 2  # reject, in the direction of S
        if futility or n == n_max:
            stop = np.minimum(stop, lam1 * (plus + minus) / 2)
        reject_at = max(0.0, (np.log(2 * lam0 / lam1) + n * theta**2 / 2) / theta)  # rejecting beats "no difference"
        if value is None:
            lower[-1] = upper[-1] = reject_at
            value = stop
            continue
        go = (plus + minus) / 2 + np.convolve(value, kernel, "same")  # one more seed, then the best from there
        go[np.abs(s) > s[-1] - DP_REACH] = np.inf
        lower[n - 1], upper[n - 1] = continuation(half, (go - stop)[len(half) - 1:], reject_at, futility)
        value = np.minimum(stop, go)
    return lower, upper


def optimal(theta: float, alpha: float, n_max: int, futility: bool) -> Design:
    """The Bayes design whose error is alpha and power 80% (or more, where the power costs nothing: l1 -> 0);
    l0 and l1 are searched on a log scale."""
    looks = np.arange(1, n_max + 1)

    def design(log0: float, log1: float) -> Design:
        lower, upper = bayes(theta, n_max, np.exp(log0), np.exp(log1), futility)
        _, error, power, seeds = evaluate(looks, lower, upper, None, theta)
        return Design(f"{'with' if futility else 'no'} futility, max {n_max}", looks, lower, upper, error, power,
                      seeds)

    def log0_for(log1: float) -> float:
        excess = lambda log0: design(log0, log1).alpha - alpha  # noqa: E731
        low, high = log1 - 5, log1 + 5
        while excess(low) < 0:
            low -= 5
        while excess(high) > 0:
            high += 5
        return optimize.brentq(excess, low, high, xtol=1e-7)

    def shortfall(log1: float) -> float:
        return design(log0_for(log1), log1).power - POWER

    log1 = -10 if shortfall(-10) >= 0 else optimize.brentq(shortfall, -10, 20, xtol=1e-7)
    return design(log0_for(log1), log1)


def walks(theta: float, m: int, n_max: int, sims: int, seed: int) -> np.ndarray:
    """S of m variants over n_max seeds, shape (sims, m, n_max), the variants sharing the baseline (rho 0)."""
    own = np.random.default_rng(seed).standard_normal((sims, m + 1, n_max), dtype=np.float32)
    return np.cumsum((own[:, 1:] - own[:, :1]) / np.float32(np.sqrt(2)) + np.float32(theta), axis=-1)


def runs(design: Design, m: int, paths: np.ndarray | None) -> tuple[float, float]:
    """(E[runs], its standard error): m E[seeds] (exact) + the baseline's E[max seeds] (simulated when m > 1)."""
    if m == 1:
        return 2 * design.seeds, 0.0
    s = np.abs(paths[..., design.looks - 1])
    go = (s > design.lower) & (s < design.upper)
    go[..., -1] = False
    longest = design.looks[np.argmin(go, axis=-1)].max(-1)
    return m * design.seeds + longest.mean(), longest.std() / np.sqrt(len(longest))


def wald_ratio(alpha: float) -> float:
    """Wald's E[seeds] of the continuous-look SPRT (one-sided error alpha / 2, power 80%) over the fixed n."""
    a, b = alpha / 2, 1 - POWER
    seeds = 2 * (POWER * np.log(POWER / a) + b * np.log(b / (1 - a)))  # in units of 1 / theta^2
    return seeds / (stats.norm.isf(a) + stats.norm.isf(b)) ** 2


@dataclass
class Case:
    label: str
    rho: float
    m: int

    @property
    def theta(self) -> float:
        return EFFECT / np.sqrt(2 * (1 - self.rho))

    @property
    def alpha(self) -> float:
        return FWER / self.m

    def real_seeds(self) -> float:
        """The fixed design's seeds if they could be fractional."""
        return ((stats.norm.isf(self.alpha / 2) + stats.norm.isf(1 - POWER)) / self.theta) ** 2


ONE, THREE = Case("1 variant, rho 0", 0.0, 1), Case("3 variants, rho 0", 0.0, 3)
CASES = (ONE, Case("1 variant, rho 0.9", 0.9, 1), THREE)


@dataclass
class Study:
    """One case: the fixed design's seeds; the family's best design and the optimal ones, and their (E[runs],
    standard error); the family's best design by spending function, (E[runs], design)."""

    case: Case
    n_fixed: int
    designs: dict[str, Design]
    runs: dict[str, tuple[float, float]]
    by_spending: dict[str, tuple[float, Design]]

    def ratio(self, total: float) -> str:
        return f"{total / ((self.case.m + 1) * self.n_fixed):.1%}"

    def cell(self, key: str) -> str:
        total, error = self.runs[key]
        return f"{total:.2f}" + (f" ± {error:.3f}" if error else "")

    def best_with(self, spending: str) -> str:
        if spending not in self.by_spending:
            return "-"
        total, design = self.by_spending[spending]
        return f"`{design.name.split('} ')[0]}}}`: {self.ratio(total)}"


def study(case: Case, factor: int, sims: int) -> Study:
    """Designs are chosen on one set of simulated baselines (seed 1) and their runs measured on another (seed 2)."""
    n_fixed = fixed_seeds(case.theta, case.alpha)
    choose, measure = ((walks(case.theta, case.m, factor * n_fixed, sims, seed) if case.m > 1 else None)
                       for seed in (1, 2))
    scored = sorted(((runs(d, case.m, choose)[0], d) for d in
                     spending_designs(case.theta, case.alpha, n_fixed, factor)), key=lambda r: r[0])
    by_spending = {}
    for total, design in scored:
        by_spending.setdefault(design.name.split("} ")[1], (total, design))
    no_futility = [optimal(case.theta, case.alpha, n, futility=False) for n in range(n_fixed, factor * n_fixed + 1)]
    designs = {"spending": scored[0][1],
               "no futility": min(no_futility, key=lambda d: runs(d, case.m, choose)[0]),
               "with futility": optimal(case.theta, case.alpha, factor * n_fixed, futility=True)}
    return Study(case, n_fixed, designs, {k: runs(d, case.m, measure) for k, d in designs.items()}, by_spending)


def holm_fixed(case: Case, sims: int) -> tuple[int, float]:
    """(seeds, power) of the smallest fixed design whose Holm test over the variants has 80% power (simulated)."""
    n_fixed = fixed_seeds(case.theta, case.alpha)  # Holm rejects whatever Bonferroni rejects
    paths = walks(case.theta, case.m, n_fixed, sims, 3)
    levels = FWER / (case.m - np.arange(case.m))
    for n in range(1, n_fixed + 1):
        z = paths[..., n - 1] / np.sqrt(n)
        p = 2 * stats.norm.sf(np.abs(z))
        rejected = np.cumprod(np.sort(p, axis=-1) <= levels, axis=-1).sum(-1, keepdims=True)
        power = float(((np.argsort(np.argsort(p, axis=-1), axis=-1) < rejected) & (z > 0)).mean())
        if power >= POWER or n == n_fixed:
            return n, power


def family_table(studies: list[Study]) -> list[str]:
    lines = ["| case | theta per seed | fixed: seeds (power) | runs | at real-valued seeds | best spending design "
             "| power | E[runs] | / fixed |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for s in studies:
        c, design, n = s.case, s.designs["spending"], s.n_fixed
        lines.append(f"| {c.label} | {c.theta:.3f} | {n} ({fixed_power(c.theta, c.alpha, n):.3f}) | {(c.m + 1) * n} | "
                     f"{(c.m + 1) * c.real_seeds():.2f} | `{design.name}` | {design.power:.3f} | {s.cell('spending')} "
                     f"| **{s.ratio(s.runs['spending'][0])}** |")
    return lines


def optimum_table(studies: list[Study], factor: int) -> list[str]:
    lines = ["| case | optimal, no futility | E[runs] | / fixed | optimal, with futility | E[runs] | / fixed "
             f"| / fixed at real n | any design up to {factor} x fixed seeds: / fixed >= "
             "| continuous looks: / fixed at real n >= |", "| --- |" + " ---: |" * 9]
    for s in studies:
        c, free, futile = s.case, s.designs["no futility"], s.designs["with futility"]
        lines.append(f"| {c.label} | max {free.looks[-1]} | {s.cell('no futility')} | "
                     f"{s.ratio(s.runs['no futility'][0])} | max {futile.looks[-1]} | {s.cell('with futility')} "
                     f"| **{s.ratio(s.runs['with futility'][0])}** "
                     f"| {s.runs['with futility'][0] / ((c.m + 1) * c.real_seeds()):.1%} "
                     f"| {futile.seeds / s.n_fixed:.1%} | {wald_ratio(c.alpha):.1%} |")
    return lines


def spending_table(studies: list[Study]) -> list[str]:
    lines = ["| spending | " + " | ".join(s.case.label for s in studies) + " |", "| --- |" + " ---: |" * len(studies)]
    for name in SPENDINGS:
        lines.append(f"| {name} | " + " | ".join(s.best_with(name) for s in studies) + " |")
    return lines


def finer_table(case: Case, factor: int, per_seed: tuple[int, ...]) -> list[str]:
    """The optimal design with futility when looks come every 1/J seed: the per-look drift is theta / sqrt(J)."""
    lines = ["| looks per seed | E[seeds] | / fixed at real n |", "| ---: | ---: | ---: |"]
    n = fixed_seeds(case.theta, case.alpha)
    for j in per_seed:
        seeds = optimal(case.theta / np.sqrt(j), case.alpha, j * factor * n, futility=True).seeds / j
        lines.append(f"| {j} | {seeds:.3f} | {seeds / case.real_seeds():.1%} |")
    return lines + [f"| continuous (Wald's SPRT, a bound) | {wald_ratio(case.alpha) * case.real_seeds():.3f} | "
                    f"{wald_ratio(case.alpha):.1%} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=200_000, help="simulated baselines with several variants")
    parser.add_argument("--factor", type=int, default=3, help="designs run at most factor x the fixed seeds")
    parser.add_argument("--per-seed", type=int, nargs="+", default=[1, 2, 4], help="look rates of the finer table")
    args = parser.parse_args()
    start = time.perf_counter()
    studies = [study(case, args.factor, args.sims) for case in CASES]
    holm = holm_fixed(THREE, args.sims)
    tables = [family_table(studies), optimum_table(studies, args.factor), spending_table(studies),
              finer_table(ONE, args.factor, tuple(args.per_seed))]
    print("\n\n".join("\n".join(t) for t in tables))
    print(f"\n{THREE.label}, Holm's fixed design: {holm[0]} seeds, power {holm[1]:.3f} (simulated)")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
