"""A sweep's results: trials.csv, best.yaml (a full spec: `nanolab run best.yaml`), best.json (the best trial's
number, parameters and objective values) and table.txt, rewritten after every trial, and the table `--status`
prints."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from nanolab.files import write_json, write_text
from nanolab.spec import dump_spec
from nanolab.sweep.storage import safe

FAILS_SHOWN = 5


def format_table(sweep, study, limit: int = 10) -> str:
    trials = study.trials()
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [f"sweep {sweep.name}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
             f", storage {safe(sweep.storage)}"]
    best = study.ranked()
    multi = len(sweep.objectives) > 1
    rows = [{"trial": t.number, **dict(zip((o.metric for o in sweep.objectives), t.values)), **t.params}
            for t in (best if multi else best[:limit])]
    if rows:
        goal = ", ".join(f"{o.direction} {o.metric}" for o in sweep.objectives)
        lines.append(f"{'Pareto front' if multi else f'top {len(rows)} trials'} ({goal}):")
        lines.append(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    else:
        lines.append("no completed trial yet")
    for t in [t for t in trials if t.state.name == "FAIL"][-FAILS_SHOWN:]:
        lines.append(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded (worker lost)')}")
    return "\n".join(lines)


def write_results(sweep, study) -> bool:
    """Rewrite the results files from the study as it stands; returns whether there is a best trial."""
    sweep.folder.mkdir(parents=True, exist_ok=True)
    write_text(sweep.folder / "trials.csv", study.dataframe().to_csv(index=False))
    best = study.ranked()
    if best:
        trial = best[0]
        values = ", ".join(f"{o.metric} {v:.4g}" for o, v in zip(sweep.objectives, trial.values))
        header = f"# best trial {trial.number} of sweep {sweep.name} ({values}), from {sweep.path}\n"
        write_text(sweep.folder / "best.yaml", header + dump_spec(sweep.config(trial.params)))
        write_json(sweep.folder / "best.json", {"trial": trial.number, "params": trial.params,
                                                "values": dict(zip((o.metric for o in sweep.objectives), trial.values))})
    write_text(sweep.folder / "table.txt", format_table(sweep, study) + "\n")
    return bool(best)
