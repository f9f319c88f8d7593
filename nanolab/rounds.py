"""The rounds of a sequential ablation (`seeds: {min, max, step}` with a `decide:` block; the statistics are
nanolab.sequential's): which cells the next round runs, and each look's decisions, recorded in the plan folder.

A round runs seeds up to the next look's count for every undecided variant and the baseline. Once its runs have
ended, the look decides and `decisions.json` (beside plan.json, written atomically) gains the look: its seed
count, the runs it added, and per variant looked at its decision and figures. The record is the truth: a rerun
(after Ctrl-C, kill -9, or a Slurm round that was only submitted) reads it, never decides a look again, and goes
on with the next round; a variant decided at a look gets no more seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nanolab import files
from nanolab.sequential import DECISIONS, SeedDesign, holm, paired_t, repeated_p, sequence

if TYPE_CHECKING:
    from nanolab.ablate import Ablation, Cell

RECORD = "decisions.json"


def read_record(folder: Path) -> dict | None:
    """The decisions.json of the plan folder `folder`, or None."""
    path = Path(folder) / RECORD
    return files.read_json(path) if path.is_file() else None


def read_looks(ablation: Ablation) -> list[dict]:
    return (read_record(ablation.plan.folder) or {"looks": []})["looks"]


def baseline_id(ablation: Ablation) -> str:
    return next(c.variant_id for c in ablation.cells if c.variant == ablation.baseline)


def compared(ablation: Ablation) -> list[str]:
    """The variants compared with the baseline, in the file's order."""
    base = baseline_id(ablation)
    return list(dict.fromkeys(c.variant_id for c in ablation.cells if c.variant_id != base))


def latest(looks: list[dict]) -> dict[str, dict]:
    """Variant id -> its entry at the last look that looked at it."""
    return {vid: entry for look in looks for vid, entry in look["variants"].items()}


def undecided(ablation: Ablation, looks: list[dict]) -> list[str]:
    known = latest(looks)
    return [v for v in compared(ablation) if known.get(v, {}).get("decision", "undecided") == "undecided"]


def next_round(ablation: Ablation, looks: list[dict]) -> tuple[int, list[Cell]] | None:
    """The next look's seed count and the cells it needs (some may have run already), or None: all decided or
    the last look taken."""
    planned = ablation.design.seeds.looks
    open_ = undecided(ablation, looks)
    if len(looks) == len(planned) or not open_:
        return None
    n, wanted = planned[len(looks)], {*open_, baseline_id(ablation)}
    return n, [c for c in ablation.cells if c.seed <= n and c.variant_id in wanted]


def round_cells(ablation: Ablation, looks: list[dict]) -> list[Cell]:
    """The cells of every round looked at and of the next round, in the file's order: the runs `nanolab status`
    lists, including those of a round whose jobs wait in Slurm's queue and have no run folder yet."""
    wanted = {c.run_id for k in range(len(looks) + 1) if (proposal := next_round(ablation, looks[:k]))
              for c in proposal[1]}
    return [c for c in ablation.cells if c.run_id in wanted]


def decide(ablation: Ablation, looks: list[dict], n: int, values: dict[str, float]) -> list[dict]:
    """Take the next look at `n` seeds from `values` (run id -> metric of every ended cell), record it and return
    all looks. Variants decided at earlier looks keep their decision and figures."""
    design, k, variants, base = ablation.design, len(looks), compared(ablation), baseline_id(ablation)
    seeds = range(1, n + 1)
    baseline = np.array([values.get(f"{base}-s{s}", np.nan) for s in seeds])
    diffs = np.array([[values.get(f"{v}-s{s}", np.nan) for s in seeds] for v in variants]) - baseline
    trajectory = sequence(design, diffs[None], looks=k + 1)
    before, looked = latest(looks), undecided(ablation, looks)
    half_width = design.bounds(design.levels(len(variants))[0])  # simultaneous over looks and variants
    entries = {}
    for j, vid in enumerate(variants):
        if vid not in looked:
            continue
        mean, se, _ = paired_t(diffs[j])
        ts = [paired_t(diffs[j, :m])[2] for m in design.seeds.looks[:k + 1]]
        entries[vid] = {"decision": DECISIONS[trajectory.code[0, j]], "look": k + 1, "seeds": n, "diff": mean,
                        "ci": [mean - half_width[k] * se, mean + half_width[k] * se], "p": repeated_p(design, ts)}
    p_now = {**{v: e["p"] for v, e in before.items()}, **{v: e["p"] for v, e in entries.items()}}
    adjusted = dict(zip(p_now, holm(np.array(list(p_now.values())))))
    for vid, entry in entries.items():
        entry["p_holm"] = adjusted[vid]
    runs = sum(1 for v in (*looked, base) for s in seeds if s > (looks[-1]["seeds"] if looks else 0))
    looks = [*looks, {"seeds": n, "runs": runs, "variants": entries}]
    files.write_json(ablation.plan.folder / RECORD, {"design": dataclasses.asdict(design), "baseline": base,
                                                     "looks": looks})
    return looks


def look_line(look: dict) -> str:
    """'look 2 at 3 seeds (+4 runs): activation=relu better, activation=swiglu undecided'"""
    said = ", ".join(f"{vid} {entry['decision']}" for vid, entry in look["variants"].items())
    return f"look at {look['seeds']} seeds (+{look['runs']} runs): {said}"


def decisions_table(record: dict, label: str) -> str:
    """What a sequential ablation decided, as `compare`, `report` and `status` print it: a line per variant with
    its decision, the look it was made at, the look-adjusted interval and p-values; then the runs used against
    the fixed design's (every variant and the baseline at seeds.max)."""
    design, looks = record["design"], record["looks"]
    seeds, decide_ = design["seeds"], design["decide"]
    entries = latest(looks)
    m = len(entries)
    confidence = f"{1 - decide_['fwer']:.0%}"
    rows = [f"| {vid} | {e['decision']} | {e['look']} ({e['seeds']} seeds) | {e['diff']:+.4f} | "
            f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}] | {p_text(e['p'])} | {p_text(e['p_holm'])} |"
            for vid, e in entries.items()]
    used, fixed = sum(look["runs"] for look in looks), (m + 1) * seeds["max"]
    margin = f", margin +-{decide_['margin']:g}" if decide_.get("margin") else ""
    margin += f", futility {decide_['futility']:g}" if decide_.get("futility") else ""
    return "\n".join([
        f"{label}: sequential over seeds {seeds['min']}..{seeds['max']} (step {seeds['step']}), {decide_['metric']} "
        f"vs baseline {record['baseline']}, FWER {decide_['fwer']:g} (Holm over {m} variants, {decide_['spending']} "
        f"spending){margin}", "",
        f"| variant | decision | look | diff | {confidence} repeated CI | p (look-adjusted) | p (Holm) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |", *rows, "",
        f"runs: {used} used, {fixed} for the fixed design at {seeds['max']} seeds ({used / fixed:.0%})"
        + ("" if len(looks) == len(SeedDesign(**seeds).looks) or all(e["decision"] != "undecided"
                                                                      for e in entries.values())
           else "; undecided variants wait for the next round")])


def p_text(p: float) -> str:
    """Repeated p-values are resolved between 1e-6 and 0.5 (`repeated_p`)."""
    return "> 0.5" if p >= 0.5 else "< 1e-06" if p <= 1e-6 else f"{p:.3g}"


def sequential_section(folder: Path) -> list[str]:
    """The report's section on a sequential ablation's decisions (none for a fixed one): the table and a
    sentence per variant, made from the record."""
    record = read_record(folder)
    if record is None:
        return []
    said = {"better": "is better than", "worse": "is worse than", "equivalent": "is equivalent to",
            "futile": "stopped for futility (a difference of the margin unlikely) against",
            "undecided": "is not distinguished from"}
    sentences = [f"{vid} {said[e['decision']]} the baseline (diff {e['diff']:+.4f}, repeated CI "
                 f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}], Holm p {p_text(e['p_holm'])}) after {e['seeds']} seeds, "
                 f"at look {e['look']}." for vid, e in latest(record["looks"]).items()]
    method = ("Method: at each look every undecided variant's paired t statistic (per-seed differences from the "
              "baseline) is compared with group-sequential boundaries of the exact null law; Holm over the "
              "variants; equivalence when the repeated CI, simultaneous over looks and variants, lies inside the "
              "margin; with a futility level, a stop (not a claim) when that look's own interval at 1 - futility "
              "does. The comparison table above does not adjust for the looks; this one does (docs/sequential.md).")
    return ["## Sequential decisions\n\n" + decisions_table(record, f"ablation {folder.name}") + "\n\n"
            + " ".join(sentences) + "\n\n" + method]
