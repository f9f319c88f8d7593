"""runs.csv: the per-run values a report is made from, published beside it at full precision, so that the report
can be regenerated from them and a reproduction checked against them run by run.

    published = published_runs(frame, metas, by, baseline)   # one row per run
    write_published(published, "docs/results/norm/runs.csv")
    print(comparison_section(read_published("docs/results/norm/runs.csv")))   # the report's tables and findings
    lines, reproduced = check_published("docs/results/norm", "runs/")       # a fresh set of runs against it

A row: run_id, group, status, seed, the run's torch threads and torch version, its final and best val/loss
(floats written as repr: they read back bit for bit), whether it is a run of the baseline variant, then the varied
config keys (`model.norm`; for named variants first their `variant` name, by which they are compared), a tuned
ablation's chosen values (`tuned.train.lr`), for a plan that varies size the values its scaling sections are made
of (SIZE_VALUES), where the report compares another figure than best/val_loss that figure's column and its name
(`metric`), and where the report was given one, the findings' equivalence `margin`. Nothing else enters the
report's numbers, so a number changed in runs.csv changes the regenerated report.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import numpy as np
import pandas as pd

from nanolab.analysis.findings import findings
from nanolab.analysis.load import VARIANT, load_runs
from nanolab.analysis.render import caption, correction_note, to_markdown
from nanolab.analysis.stats import CONFIG_SECTIONS, TUNED, compare, require_metric
from nanolab.errors import NanolabError
from nanolab.files import write_text
from nanolab.runfolder import RunFolder, RunStore
from nanolab.vocab import BEST_VAL_LOSS, TOKENS_SEEN, VAL_LOSS, VAL_LOSS_WHOLE, RunStatus, final

RUNS_CSV = "runs.csv"
METRIC = "metric"  # the column naming the figure compared, where it is not best/val_loss
LOSSES = [final(VAL_LOSS), BEST_VAL_LOSS]  # the values published and checked
FIXED = ["run_id", "group", "status", "seed", "threads", "torch", *LOSSES, "baseline"]
# a ladder's or an lr-vs-width grid's runs.csv also holds what its fits and optima are made of (a run's value ->
# its column; the parametrization, fixed over such a plan, is named without `model.` so it is not a varied key)
SIZE_VALUES = {"flops_per_token": "flops_per_token", TOKENS_SEEN: TOKENS_SEEN,
               final(VAL_LOSS_WHOLE): final(VAL_LOSS_WHOLE), "model.parametrization": "parametrization"}


def published_runs(runs: pd.DataFrame, metas: list[dict], by: list[str], baseline: dict,
                   margin: float | None = None, sizes: bool = False, metric: str = BEST_VAL_LOSS) -> pd.DataFrame:
    """The rows of runs.csv: each run of a `load_runs` frame (`metas` its meta.json's, in order), its variant by
    the `by` keys, `baseline` marking the runs of the baseline variant; with `sizes` the SIZE_VALUES; the
    `metric` compared, named in a column of that name unless it is best/val_loss; a `margin` column where the
    findings were asked for one (the report's equivalence margin). So runs.csv alone regenerates them."""
    require_metric(runs, metric)
    tuned = [c for c in runs.columns if c.startswith(TUNED) and runs[c].notna().any()]
    is_base = np.logical_and.reduce([runs[key].astype(str) == str(value) for key, value in baseline.items()])
    rows = runs.reindex(columns=["run_id", "group", "status", "seed", *LOSSES, *by, *tuned]).assign(
        threads=[meta.get("threads") for meta in metas],
        torch=[meta.get("versions", {}).get("torch") for meta in metas], baseline=is_base)
    sized = {name: runs.get(key) for key, name in SIZE_VALUES.items()} if sizes else {}
    rows = rows.assign(**sized)[[*FIXED, *by, *tuned, *sized]]
    if metric != BEST_VAL_LOSS:
        rows = rows.assign(**{metric: runs[metric], METRIC: metric})
    rows = rows.sort_values("run_id", kind="stable").reset_index(drop=True)
    return rows if margin is None else rows.assign(margin=margin)


def write_published(published: pd.DataFrame, path: str | os.PathLike) -> Path:
    write_text(Path(path), published.to_csv(index=False))
    return Path(path)


def read_published(path: str | os.PathLike) -> pd.DataFrame:
    """A runs.csv (or the folder holding one) as written; a NanolabError naming the file when it is not one."""
    path = Path(path)
    path = path / RUNS_CSV if path.is_dir() else path
    if not path.is_file():
        raise NanolabError(f"{path}: no such file; a published report's folder holds its {RUNS_CSV}")
    published = pd.read_csv(path, keep_default_na=False, na_values=[""])  # a variant `none` or `NA` stays text
    missing = [c for c in FIXED if c not in published.columns]
    if missing:
        raise NanolabError(f"{path}: not a published {RUNS_CSV}: no column {missing[0]!r}; "
                           f"expected columns {', '.join(FIXED)}, then the varied keys")
    return published.assign(baseline=published["baseline"].astype(bool))


def varied(published: pd.DataFrame) -> list[str]:
    """What defines a variant: named variants' `variant` column, else runs.csv's data.*, model.* and train.*
    columns."""
    if VARIANT in published:
        return [VARIANT]
    return [c for c in published.columns if c.split(".")[0] in CONFIG_SECTIONS]


def compared(published: pd.DataFrame) -> str:
    """The figure the comparison is made of: the one runs.csv names, else best/val_loss."""
    return str(published[METRIC].iloc[0]) if METRIC in published else BEST_VAL_LOSS


def comparison_section(published: pd.DataFrame) -> str:
    """The report's comparison (caption, table, method) and its findings, made from runs.csv's values alone."""
    margin = float(published["margin"].iloc[0]) if "margin" in published else None
    by = varied(published)
    base = published[published["baseline"]]
    baseline = base[by].iloc[0].to_dict() if not base.empty else None
    table = compare(published, by, compared(published), baseline=baseline)
    finished = int((published["status"] == RunStatus.FINISHED.value).sum())
    where = f"group {published['group'].iloc[0]}"
    title = caption(table, len(published), finished, where).replace("\n", "  \n")  # Markdown keeps its lines
    sentences = "\n".join(f"- {sentence}" for sentence in findings(table, margin)) or "No variant but the baseline."
    made = (f"Written by `nanolab report` from the table's numbers, those of {RUNS_CSV} (sha256 of its text: "
            f"{digest(published)}):")
    return "\n\n".join(["## Comparison", title, to_markdown(table), method(table), "## Findings", made, sentences])


def digest(published: pd.DataFrame) -> str:
    """The first 16 hex digits of the sha256 of runs.csv's text as written: any changed value changes it, also
    one below the table's printed digits."""
    return hashlib.sha256(published.to_csv(index=False).encode()).hexdigest()[:16]


def method(table: pd.DataFrame) -> str:
    """How the table's figures were made, from what `compare` recorded (its attrs and `test` column)."""
    a = table.attrs
    tests = " and ".join(f"a {test} t-test" for test in dict.fromkeys(table["test"].dropna()))
    return (f"Method: {a['metric']} of each variant's finished runs (n = {spread(table, 'n')} per variant), best "
            f"first ({a['direction']}); against the baseline ({a['baseline']}), the difference of means with its "
            f"{a['confidence']:.0%} confidence interval and {tests or 'no test (fewer than two runs a side)'}; "
            f"p-values {correction_note(a)}.")


def spread(frame: pd.DataFrame, column: str) -> str:
    """'600' when every row agrees, else '590-600' (min-max over the rows); '-' when none has a value."""
    numbers = pd.to_numeric(frame.get(column, pd.Series(dtype=float)), errors="coerce").dropna()
    if numbers.empty:
        return "-"
    low, high = numbers.min(), numbers.max()
    return f"{low:,.0f}" if low == high else f"{low:,.0f}-{high:,.0f}"


# ----------------------------------------------------------------------------- nanolab report --check


def check_published(published_dir: str | os.PathLike, root: str | os.PathLike | None = None,
                    tolerance: float = 1e-5) -> tuple[list[str], bool]:
    """Each published run against the run of the same id in `root` (default $NANOLAB_RUNS): 'bit-identical',
    'within X' (the largest difference of its losses, at most `tolerance`), 'differs by X', or 'missing'; and
    whether every run was reproduced (bit-identical or within). Trains nothing."""
    published = read_published(published_dir)
    group = str(published["group"].iloc[0])
    folder = RunStore(root).group(group)
    fresh = load_runs(folder) if folder.is_dir() else pd.DataFrame(columns=["run_id"])
    fresh = fresh.set_index("run_id")
    lines, verdicts = [], []
    values = list(dict.fromkeys([*LOSSES, compared(published)]))
    for _, run in published.iterrows():
        verdict = _verdict(run, fresh.loc[run["run_id"]] if run["run_id"] in fresh.index else None, values,
                           tolerance)
        verdicts.append(verdict)
        lines.append(f"{run['run_id']}: {verdict}")
    counts = pd.Series([v.split(" ")[0] for v in verdicts]).value_counts()
    summary = ", ".join(f"{n} {word}" for word, n in counts.items())
    lines.append(f"{len(published)} published runs of {group} against {folder}: {summary}")
    return lines, all(v.startswith(("bit-identical", "within")) for v in verdicts)


def _verdict(run: pd.Series, fresh: pd.Series | None, values: list[str], tolerance: float) -> str:
    if fresh is None or fresh.get("status") != RunStatus.FINISHED.value:
        return "missing" if fresh is None else f"missing (status {fresh.get('status')})"
    gaps = [abs(float(fresh.get(value, np.nan)) - float(run[value])) for value in values]
    threads = RunFolder(fresh["path"]).read_meta().get("threads")
    note = "" if threads == run["threads"] else f" (threads {threads}, published {run['threads']})"
    if all(gap == 0 for gap in gaps):
        return "bit-identical" + note
    if any(np.isnan(gaps)):
        return f"differs: no {', '.join(v for v, gap in zip(values, gaps) if np.isnan(gap))} on one side" + note
    worst = max(gaps)
    return (f"within {worst:.1e}" if worst <= tolerance else f"differs by {worst:.3g}") + note
