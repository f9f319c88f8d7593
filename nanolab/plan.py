"""Plans of runs: a plan file (ablation, sweep, tuned ablation) resolved once into a snapshot.

A plan file names an `experiment:` (a spec, relative to the file), `overrides:` for every run, and a `name:`
(default: the file's stem) that is the runs' folder, the W&B group and the study. `load_plan` reads those keys and
resolves the experiment, with every `extends:`, the plan's defaults, its overrides and `--set`, into `Plan.base`:
the plain dict of one complete Config. A front-end adds each job's changes (dotted key -> value) and checks every
job before the first one starts. After that nothing reads a file again: `Plan.config(changes)` builds a job's
Config from the snapshot, in this process, in a worker process or in a Slurm job (the plan travels with the job).

The snapshot's fingerprint (a hash of what the front-end resolved: the experiment less its name and tracking,
plus the variants, space or objectives) is recorded in every run's meta.json (`plan_fingerprint`) and in the
plan's record: an ablation's `plan.json` beside its runs, a sweep's study (whose storage machines may share). A later call whose files resolve to another snapshot stops in one line naming
what changed, before anything runs: continuing would mix two experiments in one table.

`start_or_resume` is how every job runs: a run folder that was interrupted (or is still marked running, its
process gone) continues from its checkpoint; any other is set aside as `<run-id>.attemptN` (kept, never
counted) before the job starts afresh. Front-ends skip the runs that ended (finished, diverged).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from nanolab import files
from nanolab.config import NAME_PATTERN, NAME_RULE, Config
from nanolab.config_dicts import flatten, from_dict, to_dict
from nanolab.errors import NanolabError, SpecError, shown
from nanolab.launch import Outcome
from nanolab.runfolder import RunFolder, RunStore
from nanolab.spec import load_spec, normalize_overrides, parse_override, read_yaml, set_dotted
from nanolab.vocab import BEST_VAL_LOSS, ENDED, RunStatus

FileSchema = TypeVar("FileSchema")
# every run of a plan, unless the plan file or --set says otherwise: no sample at each evaluation (a plan is many
# short runs, and a sample costs as much as a few evaluations, for text nobody reads in an ablation)
PLAN_DEFAULTS = ("train.sample_tokens=0",)
UNTRAINED = ("name", "tracking")  # config sections that change where a run is recorded, not what it trains
VERBS = {"ablation": "ablate", "sweep": "sweep"}  # the command that runs a plan of each kind


@dataclass(frozen=True)
class Plan:
    """A resolved plan file: its path (for messages), name, kind (ablation | sweep), experiment and the base config
    of every job, as a plain dict (`--set` applied last); `cli` is the `--set` changes, parsed."""

    path: Path
    name: str
    kind: str
    experiment: Path
    base: dict
    cli: tuple[tuple[str, Any], ...] = ()

    @property
    def folder(self) -> Path:
        """plan.json and the plan's other files (a sweep's journal and results, Slurm's job records)."""
        return RunStore().plan_folder(self.kind, self.name)

    def config(self, changes: Mapping[str, Any] = {}) -> Config:
        """The base config with a job's `changes` (dotted key -> value) applied."""
        return from_dict(Config, applied(self.base, changes.items()), str(self.path))

    def problem(self, changes: Mapping[str, Any] = {}) -> str | None:
        """What the config finds wrong with `changes` (the plan file's name left out), or None."""
        try:
            self.config(changes)
        except SpecError as exc:
            return str(exc).removeprefix(f"{self.path}: ")
        return None

    def with_changes(self, name: str, kind: str, changes: Mapping[str, Any]) -> Plan:
        """Another plan made from this snapshot (a tuned variant's study): `changes` in its base, then `--set` again
        (it wins over a `tune.overrides`, as over a file's overrides)."""
        return Plan(self.path, name, kind, self.experiment, applied(self.base, (*changes.items(), *self.cli)), self.cli)

    def tags(self, *own: str) -> list[str]:
        """The experiment's tracking.tags, then a run's `own` (a plan's name, a variant's label), each once."""
        return list(dict.fromkeys([*self.base["tracking"]["tags"], *own]))

    def trained(self) -> dict:
        """The base config less what does not change what a run trains (its name, tracking, the sample length:
        samples draw from their own generator): the part of every fingerprint."""
        train = {k: v for k, v in self.base["train"].items() if k != "sample_tokens"}
        return {**{k: v for k, v in self.base.items() if k not in UNTRAINED}, "train": train}

    def record(self, resolved: dict, facts: dict) -> str:
        """Check `resolved` against the plan's plan.json, written on the first call with the base config and
        `facts` (what a report says of the plan: its grid or space); returns the fingerprint. The facts follow
        from the snapshot, so a later call of the same snapshot rewrites them where this version says more."""
        resolved, facts = json.loads(json.dumps(resolved, default=str)), json.loads(json.dumps(facts, default=str))
        path, mine = self.folder / "plan.json", fingerprint(resolved)
        if path.is_file():
            stored = files.read_json(path)
            if stored.get("fingerprint") != mine:
                raise SpecError(changed_message(self.path, f"plan {shown(self.name)} in {self.folder}",
                                                stored.get("resolved", {}), resolved))
            if all(stored.get(key) == value for key, value in facts.items()):
                return mine
        files.write_json(path, {"kind": self.kind, "name": self.name, "file": str(self.path),
                                "experiment": str(self.experiment), "fingerprint": mine, "resolved": resolved,
                                "base": self.base, **facts})
        return mine


def applied(base: dict, changes) -> dict:
    """A copy of `base` with each (dotted key, value) of `changes` set, in order."""
    raw = copy.deepcopy(base)
    for key, value in changes:
        set_dotted(raw, key, value)
    return raw


def fingerprint(resolved: dict) -> str:
    """A short hash of `resolved` as JSON writes it (tuples as lists, other values as their str)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_message(source: Path, what: str, old: dict, new: dict) -> str:
    """The one line that stops a plan whose files changed since it began."""
    return (f"{source}: {what} was started from other files ({what_changed(old, new)}); continuing it would mix "
            "two experiments. To start a new plan on purpose, give the file another `name:`")


def what_changed(old: dict, new: dict) -> str:
    """'experiment.model.n_embd: 32 -> 48; space.train.lr.high: 0.01 -> 0.03' (the first three differences)."""
    a, b = flatten(old), flatten(new)
    diffs = [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
    return "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def plan_kind(path: str | Path) -> str:
    """A sweep file has `space:`; any other plan file is an ablation."""
    raw = read_yaml(Path(path))
    not_a_spec(raw, path)
    return "sweep" if "space" in raw else "ablation"


def not_a_spec(raw: dict, path: str | Path) -> None:
    """A plan file names its experiment, grid, variants or space; a file with none of them is a spec, and the
    schema's own first complaint (an unknown key `seed`) would not say so."""
    if not {"experiment", "grid", "variants", "space"} & raw.keys():
        raise SpecError(f"{path}: a spec, not an ablation (grid: or variants:) or a sweep (space:); "
                        f"`nanolab run {path}` trains it")


def read_record(plan_file: str | Path, root: str | Path | None = None) -> dict:
    """The plan.json of the plan a file names, in the runs root `root` (default $NANOLAB_RUNS): what it ran from
    (`base`, `resolved`) and its `facts`; one line naming the command to run when it has not run."""
    path, kind = Path(plan_file), plan_kind(plan_file)
    name = read_yaml(path).get("name") or path.stem
    record = RunStore(root).plan_folder(kind, str(name)) / "plan.json"
    if not record.is_file():
        raise NanolabError(f"no runs of {kind} {name} in {RunStore(root).group(str(name))}; run `nanolab "
                           f"{VERBS[kind]} {plan_file}` first")
    return files.read_json(record)


def load_plan(path: str | Path, schema: type[FileSchema], cli_overrides: tuple[str, ...] = (),
              kind: str = "ablation") -> tuple[Plan, FileSchema]:
    """Read a plan file into `schema` (a frozen dataclass with `experiment`, `name`, `overrides` fields) and resolve
    its experiment once; errors name the file, the key and the value."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path)
    not_a_spec(raw, path)
    raw = from_dict(schema, raw, source)
    experiment = path.parent / raw.experiment
    if not experiment.is_file():
        raise SpecError(f"{source}: experiment = {shown(raw.experiment)}: no such file {experiment}")
    name = raw.name or path.stem
    if not NAME_PATTERN.match(name):
        raise SpecError(f"{source}: name = {shown(name)}: {NAME_RULE} (it names the plan's folders)")
    file_overrides = normalize_overrides(raw.overrides, source)
    for text in file_overrides:
        parse_override(text, Config, f"{source}: overrides")
    for overrides, where in (((), str(experiment)), (file_overrides, f"{source}: overrides"),
                             ((*file_overrides, *cli_overrides), "--set")):
        try:
            load_spec(experiment, overrides)
        except SpecError as exc:
            raise SpecError(f"{where}: {str(exc).removeprefix(f'{experiment}: ')}") from None
    base = to_dict(load_spec(experiment, (*PLAN_DEFAULTS, *file_overrides, *cli_overrides)))
    cli = tuple(parse_override(text) for text in cli_overrides)
    return Plan(path, name, kind, experiment, base, cli), raw


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


def run_spec(cfg: Config, folder: Path, *, progress: bool) -> Outcome:
    """`nanolab run`'s task when launched (--nproc, --launcher slurm), on every rank: the run, or its
    continuation (--resume, a requeued Slurm job)."""
    return run_outcome(start_or_resume(cfg, RunFolder(folder), meta={}, progress=progress))


def ended(folder: RunFolder) -> bool:
    return folder.status in ENDED

