"""The scaling sections of `nanolab report`, for the ablations that vary size:

- a scaling ladder (a `scale:` block: the cells vary model.n_embd, model.n_layer and train.max_flops): per variant,
  Chinchilla's L(N, D) fitted on every budget but the largest (Approach 3, bootstrap intervals over runs; Approach 2
  beside it), the IsoFLOP curves with their parabolas, the compute-optimal frontier with its band, the advantage of
  each variant over the first, and the held-out check: the largest budget predicted, next to what its runs measured;
- an lr-vs-width grid (model.n_embd x train.lr): the loss against lr per width and where its minimum lies.

N is the training FLOPs per token / 6 (the weights of every matmul, plus attention's share), D the tokens trained,
so C = 6 N D is the compute each run spent; the loss is the whole val split's (train.final_eval), else the best.
Both sections are made from the report's runs.csv read back (its SIZE_VALUES columns), so they regenerate from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from nanolab.analysis.published import SIZE_VALUES, varied
from nanolab.analysis.scaling import Bootstrap, advantage, bootstrap, fit_isoflops
from nanolab.files import atomic_path
from nanolab.scale import LADDER_KEYS
from nanolab.vocab import BEST_VAL_LOSS, TOKENS_SEEN, VAL_LOSS_WHOLE, RunStatus, final

LOSS = final(VAL_LOSS_WHOLE)
LR_WIDTH = ("model.n_embd", "train.lr")
SAMPLES = 200  # bootstrap resamplings
MIN_RUNS = 6  # a variant's fitted runs: more than L(N, D)'s 5 parameters


def varies_size(keys) -> bool:
    """Whether a plan varying `keys` is a ladder or an lr-vs-width grid: its runs.csv needs SIZE_VALUES."""
    return set(LADDER_KEYS) <= set(keys) or set(LR_WIDTH) <= set(keys)


def scaling_sections(published: pd.DataFrame, out: Path) -> list[str]:
    """The scaling sections of a runs.csv (read back) that has them, their plots written to `out`."""
    keys = set(varied(published))
    if not varies_size(keys) or SIZE_VALUES["flops_per_token"] not in published:
        return []
    finished = published[published["status"] == RunStatus.FINISHED.value]
    if set(LADDER_KEYS) <= keys:
        return [ladder_section(points(finished, sorted(keys - set(LADDER_KEYS))), out)]
    return [lr_width_section(finished, out)]


def points(finished: pd.DataFrame, others: list[str]) -> pd.DataFrame:
    """One row per finished run: variant (its values of the keys other than the ladder's), N, D, C, budget, loss."""
    loss = finished[LOSS] if LOSS in finished and finished[LOSS].notna().all() else finished[BEST_VAL_LOSS]
    variant = finished[others].astype(str).agg(",".join, axis=1) if others else pd.Series("experiment", finished.index)
    N, D = finished["flops_per_token"] / 6, finished[TOKENS_SEEN].astype(float)
    return pd.DataFrame({"variant": variant, "n_embd": finished["model.n_embd"], "n_layer": finished["model.n_layer"],
                         "N": N, "D": D, "C": 6 * N * D, "budget": finished["train.max_flops"], "loss": loss,
                         "measured": "whole val split" if loss.name == LOSS else BEST_VAL_LOSS})


def ladder_section(pts: pd.DataFrame, out: Path) -> str:
    budgets = sorted(pts.budget.unique())
    if len(budgets) < 3:
        return "## Scaling\n\nFewer than 3 budgets have finished runs: nothing to fit and hold out yet."
    fitted, held = pts[pts.budget < budgets[-1]], pts[pts.budget == budgets[-1]]
    groups = dict(list(fitted.groupby("variant", sort=False)))
    fits = {v: bootstrap(g.N, g.D, g.loss, SAMPLES) for v, g in groups.items() if len(g) >= MIN_RUNS}
    unfitted = [f"{v} ({len(g)} runs)" for v, g in groups.items() if len(g) < MIN_RUNS]
    held = held[held.variant.isin(fits)]
    c_range = (fitted.C.min(), fitted.C.max())
    plot_isoflops(pts, fits, out / "isoflop.png")
    plot_frontier(pts, fits, (c_range[0], held.C.max()), out / "frontier.png")
    return "\n\n".join([
        "## Scaling",
        f"{len(pts)} runs, {pts.variant.nunique()} variants x {pts.n_embd.nunique()} sizes x {len(budgets)} budgets "
        f"(train.max_flops); loss: the {pts.measured.iloc[0]}; N = FLOPs per token / 6, D = tokens trained (largest "
        f"{pts.D.max():,.0f}). Fitted: L(N, D) = E + A/N^α + B/D^β (Approach 3, variable projection) on the "
        f"budgets {', '.join(f'{b:.3g}' for b in budgets[:-1])}; intervals: 95% percentile bootstrap over runs "
        f"({SAMPLES} resamplings). The budget {budgets[-1]:.3g} is held out."
        + (f" Too few finished runs to fit 5 parameters (fewer than {MIN_RUNS}): {', '.join(unfitted)}." if unfitted
           else ""),
        fits_table(fitted, fits), heldout_table(held, fits), *filter(None, [advantages(fits, *c_range)]),
        "![IsoFLOP curves](isoflop.png)\n\n![Frontier](frontier.png)"])


def _ci(band: Bootstrap, value, spec: str = ".3g") -> str:
    estimate, low, high = band.interval(value)
    return f"{estimate:{spec}} [{low:{spec}}, {high:{spec}}]"


def fits_table(fitted: pd.DataFrame, fits: dict[str, Bootstrap]) -> str:
    rows = ["| variant | runs | E | A | α | B | β | N* ∝ C^a: a (Approach 3) | a (Approach 2) |",
            "| --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    for variant, band in fits.items():
        g = fitted[fitted.variant == variant]
        try:
            iso = f"{fit_isoflops(g.N, g.D, g.loss, g.budget).a:.3g}"
        except ValueError as exc:
            iso = str(exc)
        cells = [_ci(band, lambda f, k=k: getattr(f, k)) for k in ("E", "A", "alpha", "B", "beta")]
        exponent = _ci(band, lambda f: f.beta / (f.alpha + f.beta))
        rows.append(f"| {variant} | {len(g)} | {' | '.join(cells)} | {exponent} | {iso} |")
    return "### Fits\n\n" + "\n".join(rows)


def heldout_table(held: pd.DataFrame, fits: dict[str, Bootstrap]) -> str:
    """Each held-out run's loss predicted from its N and D, and each variant's best run against the frontier."""
    rows = ["| variant | size | N | D | predicted (95% interval) | measured | measured - predicted |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    lines = []
    for variant, g in held.groupby("variant", sort=False):
        band = fits[variant]
        for r in g.sort_values("N").itertuples():
            estimate, low, high = band.interval(lambda f: float(f.predict(r.N, r.D)))
            rows.append(f"| {variant} | w{r.n_embd}x{r.n_layer} | {r.N:,.0f} | {r.D:,.0f} | {estimate:.4f} "
                        f"[{low:.4f}, {high:.4f}] | {r.loss:.4f} | {r.loss - estimate:+.4f} |")
        best, C = g.loss.min(), g.C.median()
        estimate, low, high = band.interval(lambda f: float(f.optimal(C)[2]))
        lines.append(f"- {variant}: best measured {best:.4f} at C = {C:.3g}; the fitted frontier predicts "
                     f"{estimate:.4f} [{low:.4f}, {high:.4f}]: the measured loss is {_where(best, low, high)}")
    return "### Held-out budget\n\n" + "\n".join(rows) + "\n\n" + "\n".join(lines)


def _where(measured: float, low: float, high: float) -> str:
    if measured < low:
        return "below the interval (the fit is pessimistic at this budget)"
    if measured > high:
        return "above the interval (the ladder's discrete sizes may miss the optimal one)"
    return "inside the interval"


def advantages(fits: dict[str, Bootstrap], c_min: float, c_max: float) -> str:
    names = list(fits)
    if len(names) < 2:
        return ""
    lines = [f"### Advantage over {names[0]} on the compute-optimal frontier (lead = L*_{names[0]} - L*_variant; > 0: "
             "the variant is better)", ""]
    for name in names[1:]:
        trend = advantage(fits[names[0]], fits[name], c_min, c_max)
        (a, al, ah), (b, bl, bh) = trend.lead
        cross = "no crossing" if trend.crossover is None else f"the frontiers cross at C = {trend.crossover:.3g}"
        lines.append(f"- {name}: lead {a:+.4f} [{al:+.4f}, {ah:+.4f}] at C = {c_min:.3g}, {b:+.4f} [{bl:+.4f}, "
                     f"{bh:+.4f}] at C = {c_max:.3g}; change {trend.change[0]:+.4f} [{trend.change[1]:+.4f}, "
                     f"{trend.change[2]:+.4f}]: **{trend.verdict}**; {cross} within [{c_min / 100:.3g}, "
                     f"{c_max * 100:.3g}]")
    return "\n".join(lines)


def _figure(panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * panels, 3.6), layout="constrained")
    FigureCanvasBase(fig)
    return fig, list(fig.subplots(1, panels, sharey=True, squeeze=False)[0])


def _save(fig: Figure, path: Path) -> None:
    for ax in fig.axes:  # a log axis spanning under a decade labels its minor ticks, on top of each other
        ax.xaxis.set_minor_formatter(NullFormatter())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_isoflops(pts: pd.DataFrame, fits: dict[str, Bootstrap], path: Path) -> None:
    """Loss against N at each budget (points), Approach 2's parabola in log N through them, Approach 3's curve."""
    fig, axes = _figure(len(fits))
    for ax, (variant, band) in zip(axes, fits.items()):
        for budget, g in pts[pts.variant == variant].groupby("budget"):
            line = ax.plot(g.N, g.loss, "o", label=f"C {budget:.2g}")[0]
            grid = np.geomspace(g.N.min(), g.N.max(), 50)
            if len(g) >= 3:
                ax.plot(grid, np.polyval(np.polyfit(np.log(g.N), g.loss, 2), np.log(grid)), "-", color=line.get_color())
            ax.plot(grid, band.fit.predict(grid, g.C.median() / (6 * grid)), ":", color=line.get_color())
        ax.set(xscale="log", xlabel="N (FLOPs per token / 6)", title=f"{variant}: parabolas (-), L(N, D) fit (:)")
    axes[0].set_ylabel("val loss")
    axes[-1].legend(fontsize="x-small")
    _save(fig, path)


def plot_frontier(pts: pd.DataFrame, fits: dict[str, Bootstrap], c_range: tuple[float, float], path: Path) -> None:
    """Each variant's compute-optimal loss L*(C) with its 95% band, and the best run at each budget."""
    fig, (ax,) = _figure(1)
    C = np.geomspace(*c_range, 60)
    for variant, band in fits.items():
        curves = np.array([f.optimal(C)[2] for f in band.refits])
        line = ax.plot(C, band.fit.optimal(C)[2], label=variant)[0]
        ax.fill_between(C, *np.nanpercentile(curves, [2.5, 97.5], axis=0), color=line.get_color(), alpha=0.2)
        best = pts[pts.variant == variant].groupby("budget").agg(C=("C", "median"), loss=("loss", "min"))
        ax.plot(best.C, best.loss, "o", color=line.get_color())
    ax.set(xscale="log", xlabel="compute C = 6 N D (FLOPs)", ylabel="val loss", title="frontier (band: 95%); best runs")
    ax.legend(fontsize="small")
    _save(fig, path)


def best_lr(g: pd.DataFrame) -> tuple[float, float]:
    """(the grid's best lr, the vertex of a parabola in log lr through it and its two neighbours; the grid's best
    at an edge of the grid)."""
    g = g.sort_values("train.lr")
    lrs, losses = np.log(g["train.lr"].to_numpy(float)), g["loss"].to_numpy(float)
    i = int(np.argmin(losses))
    if i in (0, len(lrs) - 1):
        return float(np.exp(lrs[i])), float(np.exp(lrs[i]))
    c2, c1, _ = np.polyfit(lrs[i - 1:i + 2], losses[i - 1:i + 2], 2)
    return float(np.exp(lrs[i])), float(np.exp(-c1 / (2 * c2)))


def lr_width_section(finished: pd.DataFrame, out: Path) -> str:
    frame = finished.assign(loss=finished[LOSS] if LOSS in finished and finished[LOSS].notna().all()
                            else finished[BEST_VAL_LOSS])
    fig, (ax,) = _figure(1)
    rows = ["| width | best lr (grid) | best lr (parabola) | loss there |", "| ---: | ---: | ---: | ---: |"]
    optimum, seeds = {}, frame.groupby(["model.n_embd", "train.lr"]).size()
    for width, g in frame.groupby("model.n_embd"):
        g = g.groupby("train.lr", as_index=False)["loss"].mean()  # the mean over seeds
        grid, vertex = best_lr(g)
        optimum[width] = vertex
        ax.plot(g["train.lr"], g["loss"], "o-", label=f"n_embd {width}")
        rows.append(f"| {width} | {grid:.3g} | {vertex:.3g} | {g['loss'].min():.4f} |")
    parametrization = ", ".join(map(str, finished[SIZE_VALUES["model.parametrization"]].unique()))
    ax.set(xscale="log", xlabel="train.lr", ylabel="val loss", title=f"lr vs width ({parametrization})")
    ax.legend(fontsize="small")
    _save(fig, out / "lr_width.png")
    widths = sorted(optimum)
    moves = max(optimum.values()) / min(optimum.values())
    return "\n\n".join([
        "## Learning rate against width",
        "\n".join(rows),
        f"Under the {parametrization} parametrization the best lr (the parabola's vertex in log lr) ranges over a "
        f"factor {moves:.2f} across widths {widths[0]}-{widths[-1]} ({widths[-1] / widths[0]:.0f}x); from the "
        f"narrowest to the widest it goes {optimum[widths[0]]:.3g} -> {optimum[widths[-1]]:.3g}. Runs per (width, "
        f"lr): {seeds.min()}"
        f"{'' if seeds.min() == seeds.max() else f'-{seeds.max()}'} (their mean loss); the grid's spacing and the "
        "seed noise of each cell bound how finely the optimum is located.",
        "![lr vs width](lr_width.png)"])
