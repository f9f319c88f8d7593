"""A W&B Report of an ablation or a sweep, built with `wandb-workspaces`, W&B's own library for its UI.

The only module that imports wandb_workspaces. `build_report` makes the Report object without the network: every
entity and project is given, so the library's default-entity lookup never runs, and its project lookup and the
upload happen in `Report.save` alone. `publish` saves it when W&B is online here; offline it says what it would
create and how to create it later.

What the report shows, and the W&B fields it rests on:
- one run set: the plan's W&B group, less the runs whose summary `status` (written by `WandbTracker.close`) is
  pruned or diverged; grouped by the keys the plan varies, best `best/val_loss` first;
- val/loss and train/loss against the step: per group the mean line and a min-max band;
- for a sweep, parallel coordinates over the swept keys ending in best/val_loss, and parameter importance.
The W&B config nests the spec (`{"model": {"activation": ...}}`), the form the library assumes for `config.<key>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from nanolab.config import Config
from nanolab.errors import NanolabError
from nanolab.tracking import one_line
from nanolab.tracking.wandb_open import env_or, has_api_key, resolve_mode
from nanolab.vocab import BEST_STEP, BEST_VAL_LOSS, TRAIN_LOSS, VAL_LOSS, RunStatus

HIDDEN = (RunStatus.PRUNED.value, RunStatus.DIVERGED.value)
STATUS = "status"  # the summary key WandbTracker.close writes
# val/loss in a W&B summary holds {min, last} (define_metric), not a number: the importance needs a scalar
OBJECTIVE = BEST_VAL_LOSS
LOSSES = (VAL_LOSS, TRAIN_LOSS)


def build_report(entity: str, project: str, group: str, title: str, by: Sequence[str] = (),
                 swept: Sequence[str] = ()) -> wr.Report:
    """The Report of W&B group `group`: runs grouped by the config keys `by` (an ablation's grid keys; none for a
    sweep, whose trials are one run each), and for a sweep the panels over its `swept` keys."""
    runset = wr.Runset(entity=entity, project=project, name=group, filters=visible_runs(group),
                       groupby=[f"config.{key}" for key in by],
                       order=[wr.OrderBy(wr.SummaryMetric(OBJECTIVE), ascending=True)],
                       visible_columns=[f"summary:{key}" for key in (OBJECTIVE, BEST_STEP, STATUS)])
    panels: list = [loss_plot(metric, by) for metric in LOSSES]
    if swept:
        columns = [*(wr.Config(key) for key in swept), wr.SummaryMetric(OBJECTIVE)]
        panels += [wr.ParallelCoordinatesPlot(title=f"{', '.join(swept)} -> {OBJECTIVE}",
                                              columns=[wr.ParallelCoordinatesPlotColumn(c) for c in columns]),
                   wr.ParameterImportancePlot(with_respect_to=OBJECTIVE)]
    description = f"W&B group {group}, without {' or '.join(HIDDEN)} runs; made by `nanolab report`."
    return wr.Report(entity=entity, project=project, title=title, description=description,
                     blocks=[wr.PanelGrid(runsets=[runset], panels=panels)])


def visible_runs(group: str) -> expr.And:
    return expr.And(expr.Metric("Group") == group, expr.Summary(STATUS).notin(list(HIDDEN)))


def loss_plot(metric: str, by: Sequence[str]) -> wr.LinePlot:
    """`metric` against the step; with `by`, one line per group, the mean over its runs with a min-max band.

    A LinePlot groups by at most one key of its own: with several, it groups as the run set does.
    """
    if not by:
        return wr.LinePlot(title=metric, x="Step", y=[metric])
    return wr.LinePlot(title=metric, x="Step", y=[metric], groupby=wr.Config(by[0]) if len(by) == 1 else None,
                       aggregate=True, groupby_aggfunc="mean", groupby_rangefunc="minmax")


def describe(report: wr.Report) -> str:
    """The report in words: title, place, its run set's filter, grouping and order, one line per panel."""
    lines = [f"W&B Report {report.title!r} in {report.entity or '<your default entity>'}/{report.project}"]
    for grid in report.blocks:
        for runset in grid.runsets:
            order = ", ".join(f"{o.name.name} {'ascending' if o.ascending else 'descending'}" for o in runset.order)
            lines += [f"  runs: {runset.filters}",
                      f"  grouped by: {', '.join(runset.groupby) or 'nothing (a line per run)'}; sorted by {order}"]
        lines += [f"  panel: {_panel_text(panel)}" for panel in grid.panels]
    return "\n".join(lines)


def _panel_text(panel) -> str:
    match panel:
        case wr.LinePlot():
            text = f"line plot of {', '.join(panel.y)} against {panel.x}"
            if not panel.aggregate:
                return text + ", a line per run"
            key = panel.groupby.name if panel.groupby else "the run set's grouping"
            return text + f", grouped by {key}: {panel.groupby_aggfunc} with a {panel.groupby_rangefunc} band"
        case wr.ParallelCoordinatesPlot():
            return "parallel coordinates over " + ", ".join(c.metric.name for c in panel.columns)
        case wr.ParameterImportancePlot():
            return f"parameter importance against {panel.with_respect_to}"
    return type(panel).__name__


def offline_reason(cfg: Config) -> str | None:
    """Why W&B is not online here for the experiment `cfg` (its mode, WANDB_MODE first; no API key), else None."""
    mode, auto_offline = resolve_mode(cfg)
    if auto_offline or (mode == "online" and not has_api_key()):
        return "no W&B API key"
    return None if mode == "online" else f"W&B mode {mode}"


def publish(cfg: Config, group: str, title: str, by: Sequence[str], swept: Sequence[str], plan_file: str | Path,
            runs_dir: Path, entity: str | None = None, project: str | None = None) -> str:
    """Save the report to W&B when online and return its URL; offline, return what it would be and how to make it.

    `cfg` is the plan's experiment: its tracking.wandb entity and project (W&B's variables first) are the defaults.
    """
    project = project or env_or("WANDB_PROJECT", cfg.tracking.wandb.project)
    entity = entity or env_or("WANDB_ENTITY", cfg.tracking.wandb.entity)
    if reason := offline_reason(cfg):
        report = build_report(entity or "", project, group, title, by, swept)
        return (f"{reason}: no W&B Report was created. Online, it would be\n"
                f"{describe(report)}\nto create it: `nanolab sync {runs_dir}/*/` (uploads offline runs), "
                f"`wandb login`, then `nanolab report {plan_file} --wandb`")
    import wandb

    try:
        report = build_report(entity or wandb.Api().default_entity, project, group, title, by, swept)
        report.save()
        return f"created {describe(report)}\n{report.url}"
    except Exception as exc:  # noqa: BLE001 - the network, the login, an unknown project: one line, not a traceback
        raise NanolabError(f"W&B Report not created: {one_line(exc)}") from None
