"""Scaling-law fits: Chinchilla's L(N, D) = E + A / N^α + B / D^β (Hoffmann et al. 2022, arXiv:2203.15556).

    fit = fit_loss(N, D, L)                   # Approach 3: all five parameters
    fit.predict(N, D); fit.optimal(C)         # the loss of a run; compute-optimal N*, D*, L* at C = 6 N D
    band = bootstrap(N, D, L)                 # refits over runs resampled with replacement -> percentile intervals
    isoflop = fit_isoflops(N, D, L, C)        # Approach 2: a parabola in log N per budget, then N* ∝ C^a
    trend = advantage(fits_a, fits_b, C)      # does B's lead over A grow, shrink or reverse with compute?

Approach 3 is solved by variable projection (Golub & Pereyra 1973): for fixed exponents (α, β) the loss is linear
in (E, A, B), whose best non-negative values one NNLS solve gives; the outer search is over (α, β) alone, a grid
then Nelder-Mead. Least squares on L itself, not Chinchilla's Huber loss on log L: the inner problem must stay
linear, and the runs here are few and not outlier-ridden. Approach 2 is here for comparison: it assumes each
IsoFLOP curve is a parabola in log N, which it is not, so a narrow or off-centre grid of sizes biases N*
(Besiroglu et al. 2024, arXiv:2404.10102, on refitting Chinchilla; tests/test_scaling.py shows the bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import brentq, minimize, nnls

FLOPS_PER_PARAM_TOKEN = 6  # C = 6 N D: forward + backward of every weight, once per token (Kaplan et al. 2020)
NO_CHANGE = 1e-9  # a change of the lead below this (in nats) is rounding, not a trend
EXPONENTS = np.linspace(0.05, 1.5, 30)  # the (α, β) grid the outer search starts from


@dataclass(frozen=True)
class LossFit:
    """L(N, D) = E + A / N^α + B / D^β, and its residual sum of squares over the fitted runs."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    rss: float = 0.0

    def predict(self, N, D):
        return self.E + self.A * np.power(N, -self.alpha) + self.B * np.power(D, -self.beta)

    def optimal(self, C):
        """(N*, D*, L*) at compute C = 6 N D: the minimum over N of L(N, C / 6N) (Chinchilla, eq. 4). A fit with
        A or B at 0 has no trade-off: N* is 0 or inf and L* nan (a bootstrap resampling of few runs can give one)."""
        C = np.asarray(C, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
            N = G * (C / FLOPS_PER_PARAM_TOKEN) ** (self.beta / (self.alpha + self.beta))
            D = C / (FLOPS_PER_PARAM_TOKEN * N)
            return N, D, self.predict(N, D)


def _linear_part(alpha: float, beta: float, logN, logD, L) -> tuple[np.ndarray, float]:
    """(E, A, B) >= 0 minimising the squares at fixed exponents, and that minimum; columns scaled to unit norm
    first (N^-α spans orders of magnitude that NNLS would otherwise weigh by size)."""
    X = np.column_stack([np.ones_like(L), np.exp(-alpha * logN), np.exp(-beta * logD)])
    norms = np.linalg.norm(X, axis=0)
    scale = np.where(norms > 0, norms, 1.0)  # a huge exponent underflows its column to 0
    coef, residual = nnls(X / scale, L)
    return coef / scale, residual**2


def fit_loss(N, D, L, start: tuple[float, float] | None = None) -> LossFit:
    """Approach 3 by variable projection: the exponents by Nelder-Mead from `start` (default: the best point of a
    grid), the rest by NNLS."""
    logN, logD, L = np.log(np.asarray(N, float)), np.log(np.asarray(D, float)), np.asarray(L, float)

    def rss(ab):
        return _linear_part(*ab, logN, logD, L)[1] if min(ab) > 0 else np.inf

    start = start or min(((a, b) for a in EXPONENTS for b in EXPONENTS), key=rss)
    best = minimize(rss, start, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-16, "maxiter": 4000})
    (E, A, B), value = _linear_part(*best.x, logN, logD, L)
    return LossFit(E, A, B, float(best.x[0]), float(best.x[1]), value)


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: each budget's parabola L = c2 (log N)^2 + c1 log N + c0 and its minimum, then the power law
    N*(C) = k C^a through the minima."""

    budgets: np.ndarray
    parabolas: np.ndarray  # (budgets, 3): c2, c1, c0 per budget
    n_opt: np.ndarray  # the parabola's argmin per budget
    a: float  # the exponent of N*(C); Approach 3's is β / (α + β)
    k: float

    def optimal_n(self, C):
        return self.k * np.asarray(C, float) ** self.a


def fit_isoflops(N, D, L, C) -> IsoFlopFit:
    """Approach 2 over runs grouped by their budget `C` (at least 3 sizes per budget)."""
    N, L, C = (np.asarray(x, float) for x in (N, L, C))
    budgets = np.unique(C)
    parabolas, n_opt = [], []
    for budget in budgets:
        at = C == budget
        if at.sum() < 3:
            raise ValueError(f"budget {budget:.3g} has {at.sum()} sizes; a parabola needs at least 3")
        coef = np.polyfit(np.log(N[at]), L[at], 2)
        parabolas.append(coef)
        n_opt.append(np.exp(-coef[1] / (2 * coef[0])))
    a, log_k = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    return IsoFlopFit(budgets, np.array(parabolas), np.array(n_opt), float(a), float(np.exp(log_k)))


@dataclass(frozen=True)
class Bootstrap:
    """The fit to every run, and the refits to `samples` resamplings of the runs (with replacement)."""

    fit: LossFit
    refits: tuple[LossFit, ...]

    def interval(self, value: Callable[[LossFit], float], level: float = 0.95) -> tuple[float, float, float]:
        """(estimate, low, high) of a quantity of a fit: its value at the full fit and the percentile interval
        over the refits where it is defined (nan where a refit has no frontier, see `LossFit.optimal`)."""
        values = np.array([value(f) for f in self.refits])
        tail = 100 * (1 - level) / 2
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        return float(value(self.fit)), float(low), float(high)


def bootstrap(N, D, L, samples: int = 200, seed: int = 0) -> Bootstrap:
    """Approach 3 on all runs, then on `samples` resamplings of them (runs, not points of a curve, are the unit),
    each refit started from the full fit's exponents."""
    N, D, L = (np.asarray(x, float) for x in (N, D, L))
    rng, fit = np.random.default_rng(seed), fit_loss(N, D, L)
    draws = (rng.integers(0, len(L), len(L)) for _ in range(samples))
    return Bootstrap(fit, tuple(fit_loss(N[i], D[i], L[i], (fit.alpha, fit.beta)) for i in draws))


@dataclass(frozen=True)
class Advantage:
    """How B's lead over A on the compute-optimal frontier, L*_A(C) - L*_B(C) (> 0: B is better), moves between
    the smallest and the largest budget: its values there with intervals, the change and where they cross."""

    budgets: tuple[float, float]
    lead: tuple[tuple[float, float, float], tuple[float, float, float]]  # (estimate, low, high) at each budget
    change: tuple[float, float, float]  # lead at the largest budget minus at the smallest
    crossover: float | None  # the compute where the frontiers cross, in [C_min / 100, C_max * 100], or None

    @property
    def verdict(self) -> str:
        """grows | shrinks | reverses | flat (the change's interval holds 0): of the lead's size, in B's favour
        or against it."""
        start, end = self.lead[0][0], self.lead[1][0]
        if self.crossover is not None and np.sign(start) != np.sign(end):
            return "reverses"
        _, low, high = self.change
        if low <= NO_CHANGE and high >= -NO_CHANGE:
            return "flat"
        return "grows" if (high < 0) == (start < 0) else "shrinks"


def lead(a: LossFit, b: LossFit, C) -> np.ndarray:
    return a.optimal(C)[2] - b.optimal(C)[2]


def crossover(a: LossFit, b: LossFit, low: float, high: float) -> float | None:
    """The compute in [low, high] where the two frontiers cross (the first sign change on a log grid), or None."""
    grid = np.logspace(np.log10(low), np.log10(high), 200)
    diff = lead(a, b, grid)
    flips = np.nonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))[0]
    if not len(flips):
        return None
    i = flips[0]
    return float(10 ** brentq(lambda x: lead(a, b, 10**x), np.log10(grid[i]), np.log10(grid[i + 1])))


def advantage(a: Bootstrap, b: Bootstrap, c_min: float, c_max: float, level: float = 0.95) -> Advantage:
    """B's lead over A from `c_min` to `c_max`, with intervals from pairing the i-th refits of each (independent
    resamplings, so each pair is a draw of the difference)."""
    pairs = list(zip(a.refits, b.refits))
    tails = [100 * (1 - level) / 2, 100 - 100 * (1 - level) / 2]

    def interval(value: Callable[[LossFit, LossFit], float]) -> tuple[float, float, float]:
        low, high = np.nanpercentile([value(x, y) for x, y in pairs], tails)
        return float(value(a.fit, b.fit)), float(low), float(high)

    ends = (interval(lambda x, y: lead(x, y, c_min)), interval(lambda x, y: lead(x, y, c_max)))
    return Advantage((c_min, c_max), ends,
                     interval(lambda x, y: lead(x, y, c_max) - lead(x, y, c_min)),
                     crossover(a.fit, b.fit, c_min / 100, c_max * 100))
