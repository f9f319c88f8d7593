"""Savings of sequential seeds, by simulation: expected runs and power of the fixed design and of sequential
designs at the same family-wise error, for effects in units of the seed-to-seed sd (sigma).

    python benchmarks/sequential.py --rho 0 0.9   # prints the Markdown tables of benchmarks/NOTES.md

Each simulated ablation draws every run's metric as mu + effect + sigma * (sqrt(rho) S + sqrt(1 - rho) E), S
shared by the runs of one seed (its initialisation and batch order), E the run's own: rho is the correlation of
two variants at the same seed (0: no pairing benefit; the README's activation ablation measured about 0.9). The
fixed design is the smallest number of seeds whose paired t-test (Holm over the variants) has 80% power at effect
= 2 sigma; the sequential design is the one, among seeds.min 2..4, seeds.max up to 16, steps 1 and 2 and both
spending functions, with the fewest expected runs at 2 sigma among those with at least that power; the same with
equivalence stops at a margin of 0.5 sigma, and with futility stops at a margin of 1 sigma (the level searched too).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from nanolab.sequential import Decide, Design, SeedDesign, sequence

EFFECTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # in units of sigma
TARGET = 2.0  # the effect the designs are sized for: power 80% at twice the seed sd
POWER = 0.8
FUTILITY = (0.2, 0.4, 0.6, 0.8)  # the levels searched, at a margin of 1 sigma (half the effect the design is for)


def simulate(design: Design, m: int, effect: float, rho: float, sims: int, seed: int) -> tuple[float, float]:
    """(power, expected runs): the share of variants called in the right direction, the mean runs per ablation."""
    own = np.random.default_rng(seed).standard_normal((sims, m + 1, design.seeds.max)) * np.sqrt(1 - rho)
    diffs = own[:, 1:] - own[:, :1] - effect  # every variant better by `effect` (lower metric); S cancels
    trajectory = sequence(design, diffs)
    called = trajectory.code == 1 if effect > 0 else (trajectory.code == 1) | (trajectory.code == 2)
    return float(called.mean()), float(trajectory.runs.mean())


def fixed(n: int, fwer: float) -> Design:
    return Design(SeedDesign(n, n, 1), Decide(fwer=fwer))


def smallest_fixed(m: int, fwer: float, rho: float, sims: int) -> Design:
    for n in range(2, 40):
        if simulate(fixed(n, fwer), m, TARGET, rho, sims, 1)[0] >= POWER:
            return fixed(n, fwer)
    raise SystemExit("no fixed design up to 40 seeds reaches the power")


def best_sequential(m: int, fwer: float, rho: float, sims: int, margin: float | None,
                    futility: tuple[float | None, ...] = (None,)) -> Design:
    candidates = []
    for low, high, step, spending, level in itertools.product((2, 3, 4), range(3, 17), (1, 2), ("obf", "pocock"),
                                                              futility):
        if high <= low:
            continue
        design = Design(SeedDesign(low, high, step), Decide(fwer=fwer, spending=spending, margin=margin,
                                                            futility=level))
        power, runs = simulate(design, m, TARGET, rho, sims, 1)
        if power >= POWER:
            candidates.append((runs, high, design))
    return min(candidates, key=lambda c: c[:2])[2]


def describe(design: Design) -> str:
    s, d = design.seeds, design.decide
    margin = f", margin {d.margin:g} sigma" if d.margin else ""
    futility = f", futility {d.futility:g}" if d.futility else ""
    return f"seeds {{min: {s.min}, max: {s.max}, step: {s.step}}}, {d.spending}{margin}{futility}"


def table(m: int, fwer: float, rho: float, sims: int) -> str:
    base = smallest_fixed(m, fwer, rho, sims)
    designs = {"fixed": base, "sequential": best_sequential(m, fwer, rho, sims, None),
               "sequential + margin": best_sequential(m, fwer, rho, sims, 0.5),
               "sequential + futility": best_sequential(m, fwer, rho, sims, 1.0, FUTILITY)}
    lines = [f"{m} variant(s) + baseline, FWER {fwer}, rho {rho:g}, {sims:,} simulated ablations per cell (seed 2 "
             "for the table; the designs were chosen on seed 1)", ""]
    lines += [f"- {name}: {describe(design)}" for name, design in designs.items()]
    lines += ["", "| effect (sigma) | " + " | ".join(f"{name}: runs (power)" for name in designs)
              + " | sequential / fixed runs |", "| ---: |" + " ---: |" * (len(designs) + 1)]
    for effect in EFFECTS:
        results = [simulate(design, m, effect, rho, sims, 2) for design in designs.values()]
        cells = [f"{runs:.1f} ({power:.2f})" for power, runs in results]
        ratio = " / ".join(f"{r[1] / results[0][1]:.0%}" for r in results[1:])
        lines.append(f"| {effect:g} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append("\n(power at effect 0 is the family-wise false-positive rate)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=20_000)
    parser.add_argument("--fwer", type=float, default=0.05)
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0], help="pairing correlations, each in [0, 1)")
    args = parser.parse_args()
    for rho, m in itertools.product(args.rho, args.variants):
        print(table(m, args.fwer, rho, args.sims), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
