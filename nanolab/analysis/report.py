"""`nanolab report FILE`: one Markdown report of an ablation or a sweep that has run, with its plots.

    write_report("experiments/ablations/activation.yaml")   # -> reports/activation/report.md and two PNGs

The report reads what the plan recorded when it ran (its plan.json: the snapshot, the grid or space; a sweep's
table.txt and best.json) and its run folders ($NANOLAB_RUNS/<name>/), and trains nothing; it never reads the
plan file's experiment again. Sections: what ran; for an ablation the comparison table and its method, for a sweep
the top trials and the best parameters; val/loss against step and against FLOPs (mean line, min-max band over
seeds); each variant's tuned values; for a ladder or an lr-vs-width grid the scaling sections
(nanolab.analysis.scaling_report); the environment the runs recorded; their W&B links. `wandb_report` makes the
W&B Report of the same runs (nanolab.tracking.workspace).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from nanolab.analysis.load import load_history, load_runs
from nanolab.analysis.published import (RUNS_CSV, comparison_section, published_runs, read_published, spread,
                                        write_published)
from nanolab.analysis.render import AXIS_LABELS, markdown_row, plot_history
from nanolab.analysis.scaling_report import scaling_sections, varies_size
from nanolab.analysis.command import ablation_keys
from nanolab.analysis.stats import TUNED, compare, is_finished, label
from nanolab.config import Config
from nanolab.config_dicts import from_dict
from nanolab.errors import NanolabError
from nanolab.files import read_json, write_text
from nanolab.plan import VERBS, read_record
from nanolab.rounds import sequential_section
from nanolab.runfolder import RunFolder, RunStore
from nanolab.tuning import study_name
from nanolab.vocab import BEST_VAL_LOSS, STEPS, TOKENS_SEEN, VAL_LOSS

PLOTS = {"step": "val_loss_step.png", "flops": "val_loss_flops.png"}  # x axis -> file


def write_report(plan_file: str | os.PathLike, out: str | os.PathLike | None = None,
                 runs: str | os.PathLike | None = None, margin: float | None = None,
                 metric: str = BEST_VAL_LOSS) -> Path:
    """Write `<out>/report.md` and its PNGs (default out: reports/<name>/), and for an ablation its runs.csv;
    returns the report's path.

    `runs` is the runs root (default $NANOLAB_RUNS, else ./runs). `margin`: the findings call a difference
    equivalent where its interval lies inside +-margin (default: never). `metric`: the figure of each run's
    summary the comparison and findings are made of.
    """
    plan, store = read_record(plan_file, runs), RunStore(runs)
    folder = store.group(plan["name"])
    frame = plan_runs(plan, folder, plan_file)
    out = Path("reports") / plan["name"] if out is None else Path(out)
    finished = frame[is_finished(frame)]
    metas = [RunFolder(path).read_meta() for path in frame["path"]]
    if plan["kind"] == "ablation":
        by = ablation_keys(plan)[0]
        published = _publish(plan, frame, metas, out, margin, metric)
        results = [comparison_section(published), *sequential_section(folder), _curves(finished, by, "variant", out),
                   _tuned(frame, by), *_studies(plan, store), *scaling_sections(published, out)]
    else:
        results = [_trials(plan, store.plan_folder("sweep", plan["name"])), _curves(finished, ["run_id"], "trial", out)]
    sections = [f"# {plan['kind'].capitalize()} {plan['name']}", _what_ran(plan, frame, folder), *results,
                _environment(metas), _wandb_links(plan_file, frame["run_id"], metas, folder)]
    write_text(out / "report.md", "\n\n".join(sections) + "\n")
    return out / "report.md"


def wandb_report(plan_file: str | os.PathLike, entity: str | None = None, project: str | None = None) -> str:
    """Create the plan's W&B Report when W&B is online here; offline, what it would create and how, later."""
    from nanolab.tracking.workspace import publish

    plan = read_record(plan_file)
    swept, by = list(plan.get("space", {})), list(plan.get("varied", {}))
    return publish(from_dict(Config, plan["base"], str(plan_file)), plan["name"],
                   f"{plan['kind'].capitalize()} {plan['name']}", by, swept, plan_file,
                   RunStore().group(plan["name"]), entity, project)


def plan_runs(plan: dict, folder: Path, plan_file) -> pd.DataFrame:
    """The run folders of the plan; a NanolabError when it has none yet."""
    runs = load_runs(folder) if folder.is_dir() else pd.DataFrame()
    if runs.empty:
        raise NanolabError(f"no runs of {plan['kind']} {plan['name']} in {folder}; "
                           f"run `nanolab {VERBS[plan['kind']]} {plan_file}` first")
    return runs


# ----------------------------------------------------------------------------- sections


def _what_ran(plan: dict, runs: pd.DataFrame, folder: Path) -> str:
    statuses = ", ".join(f"{n} {status}" for status, n in Counter(runs["status"]).items())
    seeds = ", ".join(map(str, sorted(runs["seed"].unique())))
    if plan.get("named"):
        varied = "variants: " + "; ".join(f"{name} ({label(changes) or 'the experiment itself'})"
                                          for name, changes in plan["named"].items())
    elif plan["kind"] == "ablation":
        varied = "grid: " + "; ".join(f"{key} in {values}" for key, values in plan["varied"].items())
    else:
        varied = "space: " + "; ".join(f"{key} {spec}" for key, spec in plan["space"].items())
    return "\n".join([
        "## What ran",
        "",
        f"- {plan['kind']} `{plan['file']}` over the experiment `{plan['experiment']}`; run folders in `{folder}`",
        f"- {varied}",
        f"- {len(runs)} runs ({statuses}), seeds {seeds}",
        f"- per run: {spread(runs, STEPS)} steps, {spread(runs, TOKENS_SEEN)} tokens, "
        f"{spread(runs, 'params')} parameters",
    ])


def _publish(plan: dict, runs: pd.DataFrame, metas: list[dict], out: Path, margin: float | None,
             metric: str) -> pd.DataFrame:
    """The runs.csv written beside the report, read back: the published values are all that the comparison, its
    findings and the scaling sections are made from. Named variants' runs.csv also holds the keys they change."""
    by, baseline = ablation_keys(plan)
    baseline = baseline or compare(runs, by, metric).attrs["baseline_keys"]
    keys = [key for key in plan["varied"] if key not in by]
    published = published_runs(runs, metas, [*by, *keys], baseline, margin, sizes=varies_size(by), metric=metric)
    return read_published(write_published(published, out / RUNS_CSV))


def _trials(sweep: dict, folder: Path) -> str:
    """The table the sweep wrote after its last trial, and its best trial (best.json)."""
    table = folder / "table.txt"
    if not table.is_file():
        return f"## Trials\n\nNo table of trials in {folder}: the study recorded none."
    trials = f"## Trials\n\n```text\n{table.read_text().rstrip()}\n```\n\n## Best parameters"
    if not (folder / "best.json").is_file():
        return f"{trials}\n\nNo trial completed."
    best = read_json(folder / "best.json")  # several objectives: the Pareto front's best by the first
    params = markdown_table([{"key": key, "value": value} for key, value in best["params"].items()])
    return f"{trials}\n\nTrial {best['trial']}; `nanolab run {folder / 'best.yaml'}` trains it again.\n\n{params}"


def _curves(finished: pd.DataFrame, by: list[str], line: str, out: Path) -> str:
    """val/loss of the finished runs against step and against FLOPs, a `line` (variant, trial) per value of `by`."""
    if finished.empty:
        return "## Curves\n\nNo finished run to plot."
    keys = list(dict.fromkeys(["run_id", *by]))
    history = load_history(finished).merge(finished[keys], on="run_id")
    figures = []
    for x, name in PLOTS.items():
        plot_history(history, by, out / name, VAL_LOSS, x=x)
        figures.append(f"![{VAL_LOSS} against {AXIS_LABELS[x]}]({name})")
    return "\n\n".join(["## Curves", f"{VAL_LOSS} of the finished runs, a line per {line}: the mean over its runs, "
                        "shaded from their min to their max.", *figures])


def _tuned(runs: pd.DataFrame, by: list[str]) -> str:
    """Each variant's tuned values: the `tuned.<key>` columns load_runs makes of a tuned ablation's meta.json."""
    tuned = [column for column in runs.columns if column.startswith(TUNED)]
    if not tuned:
        return "## Tuned parameters\n\nNot tuned: every variant ran at the experiment's values."
    values = runs[[*by, *tuned]].dropna(subset=tuned).astype(str).drop_duplicates()
    rows = [{key.removeprefix(TUNED): value for key, value in row.items()} for row in values.to_dict("records")]
    return ("## Tuned parameters\n\nEach variant's values, chosen by its own study before its seeds ran:\n\n"
            + markdown_table(rows))


def _studies(plan: dict, store: RunStore) -> list[str]:
    """What each variant's study saw: its objective for every completed trial (the study's trials.csv), a row per
    variant, a column per point of the space, the variant's best in bold."""
    tune = plan["resolved"].get("tune", {})
    rows = {variant: _trials_of(store.plan_folder("sweep", study_name(plan["name"], variant))) for variant in tune}
    rows = {variant: trials for variant, trials in rows.items() if trials is not None}
    if not rows:
        return []
    study = next(iter(tune.values()))  # every variant's study has the same space and objective
    metric, direction = next(iter(study["objectives"].items()))
    points = sorted({point for trials in rows.values() for point in trials},
                    key=lambda point: [(type(value).__name__, value) for value in point])
    table = [{"variant": variant, **_row(trials, points, direction)} for variant, trials in rows.items()]
    return [f"## What each study saw\n\n{metric} ({direction}) of each completed tuning trial, by "
            f"{', '.join(study['space'])}; each variant's best, at which its seeds ran, in bold:\n\n"
            + markdown_table(table)]


def _trials_of(folder: Path) -> dict[tuple, float] | None:
    """A study's completed trials, (its parameter values) -> objective; None when it wrote no trials.csv."""
    if not (folder / "trials.csv").is_file():
        return None
    trials = pd.read_csv(folder / "trials.csv")
    trials = trials[trials["state"] == "COMPLETE"]
    params = [c for c in trials.columns if c.startswith("params_")]
    value = next(c for c in trials.columns if c.startswith("value"))
    return {tuple(row[params]): row[value] for _, row in trials.iterrows()}


def _row(trials: dict[tuple, float], points: list[tuple], direction: str) -> dict[str, str]:
    """A study's cells, a column per point of the space ('' where it ran none), its best in bold."""
    best = (min if direction == "minimize" else max)(trials.values())
    cells = {point: f"**{value:.4f}**" if value == best else f"{value:.4f}" for point, value in trials.items()}
    return {", ".join(map(_text, point)): cells.get(point, "") for point in points}


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _environment(metas: list[dict]) -> str:
    """Where the runs ran, as meta.json recorded it (nanolab.environment); a field on which runs differ says so."""
    versions = dict.fromkeys(name for meta in metas for name in meta.get("versions", {}))
    fields = {"git commit": [_commit(meta.get("git") or {}) for meta in metas],
              **{name: [meta.get("versions", {}).get(name, "-") for meta in metas] for name in versions},
              "device": [f"{meta.get('device')} ({meta.get('device_name')})" for meta in metas]}
    rows = [{"field": name, "value": _agreed(values)} for name, values in fields.items()]
    return "## Environment\n\n" + markdown_table(rows)


def _commit(git: dict) -> str:
    if not git.get("commit"):
        return "none (not a git checkout)"
    return f"`{git['commit']}`" + (" with uncommitted changes (the diff is in meta.json)" if git.get("dirty") else "")


def _agreed(values: Sequence[Any]) -> str:
    counts = Counter(map(str, values))
    if len(counts) == 1:
        return next(iter(counts))
    return "runs disagree: " + "; ".join(f"{value} ({n} runs)" for value, n in counts.items())


def _wandb_links(plan_file, run_ids: pd.Series, metas: list[dict], folder: Path) -> str:
    links = [f"- [{run_id}]({meta['wandb_url']})" for run_id, meta in zip(run_ids, metas) if meta.get("wandb_url")]
    offline = [run_id for run_id, meta in zip(run_ids, metas)
               if meta.get("wandb_mode") == "offline" and not meta.get("wandb_url")]
    notes = [f"{len(offline)} of the runs are offline W&B runs: `nanolab sync {folder}/*/` uploads them, then "
             f"`nanolab report {plan_file} --wandb` makes their W&B Report."] if offline else []
    if not links and not offline:
        notes = ["W&B was off for these runs (tracking.wandb.mode disabled): the run folders hold everything."]
    return "\n\n".join(["## W&B", *(["\n".join(links)] if links else []), *notes])


def markdown_table(rows: list[dict]) -> str:
    """Rows of plain values as a Markdown table, the columns of the first row."""
    columns = list(rows[0])
    lines = [columns, ["---"] * len(columns), *([row.get(c, "") for c in columns] for row in rows)]
    return "\n".join(markdown_row(line) for line in lines)
