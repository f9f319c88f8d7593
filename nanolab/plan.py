"""Plan files (ablations and sweeps) and the one way a job of a plan becomes a run.

A plan file names an `experiment:` (a spec, relative to the file), `overrides:` for every run, and a `name:`
(default: the file's stem) that is the runs' folder, the W&B group and the study. Its runs generate no sample
at their evaluations unless its overrides (or `--set`) set `train.sample_tokens`. `load_plan` reads the
keys shared by every plan; the front-end (ablate, sweep) reads its own and checks every variant with
`Plan.check` before the first run starts.

`start_or_resume` is how every job runs: a run folder that was interrupted (or is still marked running, its
process gone) continues from its checkpoint; any other is set aside as `<run-id>.attemptN` (kept, never
counted) before the job starts afresh. Front-ends skip the runs that ended (finished, diverged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from nanolab.config import NAME_PATTERN, NAME_RULE, Config
from nanolab.errors import SpecError
from nanolab.launcher import Outcome
from nanolab.runfolder import RunFolder, RunStore
from nanolab.spec import load_spec, normalize_overrides, parse_override, read_yaml
from nanolab.config import from_dict
from nanolab.vocab import BEST_VAL_LOSS, ENDED, RunStatus

FileSchema = TypeVar("FileSchema")
# every run of a plan, unless the plan file or --set says otherwise: no sample at each evaluation (a plan is many
# short runs, and a sample costs as much as a few evaluations, for text nobody reads in an ablation)
PLAN_DEFAULTS = ("train.sample_tokens=0",)


@dataclass(frozen=True)
class Plan:
    """What every plan file says: where it is, its name, its experiment and the overrides of every run."""

    path: Path
    name: str
    experiment: Path
    overrides: tuple[str, ...]  # the file's `overrides:`, then `--set`

    def config(self, extra: tuple[str, ...] = ()) -> Config:
        return load_spec(self.experiment, (*self.overrides, *extra))

    def problem(self, extra: tuple[str, ...] = ()) -> str | None:
        """What the experiment finds wrong with the overrides and `extra` (its own file name left out)."""
        try:
            self.config(extra)
        except SpecError as exc:
            return str(exc).removeprefix(f"{self.experiment}: ")
        return None


def load_plan(path: str | Path, schema: type[FileSchema], cli_overrides: tuple[str, ...] = ()
              ) -> tuple[Plan, FileSchema]:
    """Read a plan file into `schema` (a frozen dataclass with `experiment`, `name`, `overrides` fields) and
    check the shared keys; errors name the file, the key and the value."""
    path = Path(path)
    source = str(path)
    raw = from_dict(schema, read_yaml(path), source)
    experiment = path.parent / raw.experiment
    if not experiment.is_file():
        raise SpecError(f"{source}: experiment = {raw.experiment!r}: no such file {experiment}")
    name = raw.name or path.stem
    if not NAME_PATTERN.match(name):
        raise SpecError(f"{source}: name = {name!r}: {NAME_RULE} (it names the plan's folders)")
    file_overrides = normalize_overrides(raw.overrides, source)
    for text in file_overrides:
        parse_override(text, Config, f"{source}: overrides")
    plan = Plan(path, name, experiment, ())
    for extra, where in (((), str(experiment)), (file_overrides, f"{source}: overrides"),
                         ((*file_overrides, *cli_overrides), "--set")):
        if problem := Plan(path, name, experiment, extra).problem():
            raise SpecError(f"{where}: {problem}")
    plan = Plan(path, name, experiment, (*PLAN_DEFAULTS, *file_overrides, *cli_overrides))
    return plan, raw


def start_or_resume(cfg: Config, folder: RunFolder, *, meta: dict[str, Any], progress: bool,
                    on_eval: Callable[[int, dict], None] | None = None, say: Callable[[str], None] = print):
    """Run `cfg` in `folder`, continuing it when it was interrupted; returns the RunResult."""
    from nanolab.runner import run

    status = folder.status
    if status in (RunStatus.INTERRUPTED, RunStatus.RUNNING) and folder.ckpt("last").is_file():
        return run(cfg, resume_dir=folder.path, show_progress=progress, on_eval=on_eval)
    if folder.path.exists() and os.environ.get("RANK", "0") == "0":  # one DDP rank moves it; all start afresh
        aside = RunStore.set_aside(folder)
        say(f"nanolab: {folder.path} ended as {status or 'unknown'}; moved to {aside.path}")
    return run(cfg, run_id=folder.run_id, extra_meta=meta, show_progress=progress, on_eval=on_eval)


def run_outcome(result) -> Outcome:
    """A launcher's summary of a RunResult: its status, best val/loss (or why it stopped)."""
    best = result.summary.get(BEST_VAL_LOSS)
    text = f"{BEST_VAL_LOSS} {best:.4f}" if best is not None else ""
    return Outcome(RunStatus(result.status), ", ".join(filter(None, [text, result.reason])), best)


def run_spec(cfg: Config, run_id: str, *, progress: bool) -> Outcome:
    """`nanolab run SPEC --launcher slurm`'s job, on every rank: the run, continued after a requeue."""
    return run_outcome(start_or_resume(cfg, RunStore().folder(cfg.name, run_id), meta={}, progress=progress))


def ended(folder: RunFolder) -> bool:
    return folder.status in ENDED
