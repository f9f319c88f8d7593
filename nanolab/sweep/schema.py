"""The sweep file: its keys, their checks, and the validated `Sweep` every worker receives.

    # sweeps/lr.yaml
    name: lr                                    # default: the file's stem; the study, W&B group and runs' folder
    experiment: ../experiments/baseline.yaml    # relative to this file
    overrides: {train.max_iters: 300}           # for every trial (a list of KEY=VALUE, or a mapping)
    objective: {metric: val/loss, direction: minimize}   # or a list of them: a Pareto front
    space:
      train.lr: {float: [1.0e-4, 3.0e-2], log: true}     # also `step`
      train.warmup_iters: {int: [0, 100], step: 10}      # also `log`
      model.activation: {choice: [gelu, swiglu]}         # every choice is built into a Config before trial 0
    sampler: {name: tpe, seed: 0}               # tpe | random | grid | cmaes | qmc, plus the sampler's options
    pruner: {name: median, n_warmup_steps: 50}  # median | hyperband | successive_halving | none, plus options
    trials: 12                                  # per call; `--trials` wins
    storage: postgresql://host/db               # absent: a journal file in the sweep folder
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanolab.config import Config, ConfigError
from nanolab.config_dicts import check_key, from_dict
from nanolab.errors import SpecError, shown
from nanolab.plan import Plan, fingerprint, load_plan
from nanolab.registry import closest
from nanolab.runfolder import RunFolder, RunStore
from nanolab.launch import SlurmOptions
from nanolab.spec import format_override
from nanolab.sweep import study as optuna_study
from nanolab.sweep.storage import safe
from nanolab.vocab import OBJECTIVE_METRICS, PRUNED_ON_VAL_LOSS, VAL_LOSS

DIRECTIONS = ("minimize", "maximize")
DISTRIBUTIONS = {"float": ("log", "step"), "int": ("log", "step"), "choice": ()}
DEFAULTS = {"sampler": "tpe", "pruner": "median"}


def accepted(value: Any, choices: list[str], what: str) -> str:
    hint = closest(str(value), choices)
    suffix = f" (did you mean {shown(hint)}?)" if hint else ""
    return f"unknown {what}; accepted: {', '.join(choices) or '(none)'}{suffix}"


@dataclass(frozen=True)
class SweepFile:
    """The keys of a sweep file as written; `load_sweep` turns the free-form ones into the types below."""

    experiment: str = ""
    space: dict = field(default_factory=dict)
    name: str | None = None
    overrides: Any = None
    objective: Any = None
    sampler: Any = DEFAULTS["sampler"]
    pruner: Any = DEFAULTS["pruner"]
    trials: int = 20
    storage: str | None = None
    launcher: SlurmOptions = field(default_factory=SlurmOptions)  # for --launcher slurm

    def __post_init__(self):
        if not self.experiment:
            raise ConfigError("experiment", None, "required: the spec every trial starts from, relative to this file")
        if not self.space:
            raise ConfigError("space", self.space, "expected at least one dotted key with a distribution")
        if self.trials < 1:
            raise ConfigError("trials", self.trials, "must be >= 1")


@dataclass(frozen=True)
class Objective:
    metric: str = VAL_LOSS
    direction: str = "minimize"

    def __post_init__(self):
        if self.metric not in OBJECTIVE_METRICS:
            raise ConfigError("metric", self.metric, accepted(self.metric, list(OBJECTIVE_METRICS), "metric"))
        if self.direction not in DIRECTIONS:
            raise ConfigError("direction", self.direction, accepted(self.direction, list(DIRECTIONS), "direction"))


@dataclass(frozen=True)
class Dimension:
    """One `space:` entry: a dotted config key and the values a trial may give it."""

    key: str
    kind: str  # float | int | choice
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def values(self) -> list:
        """The values checked against the experiment before any trial: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def as_written(self) -> dict:
        """The dimension as the sweep file writes it: {float: [low, high], log: true}, {choice: [...]}."""
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {self.kind: [self.low, self.high], **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}


@dataclass(frozen=True)
class Algorithm:
    """A sampler or pruner: its name and its constructor's options (a sampler's `seed` among them)."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: everything a worker process needs to run trials (picklable)."""

    plan: Plan
    objectives: tuple[Objective, ...]
    space: tuple[Dimension, ...]
    sampler: Algorithm
    pruner: Algorithm
    trials: int
    storage: str  # an Optuna RDB URL, or the path of a journal file
    group: str  # the runs' W&B group: the sweep's name, or `<ablation>-tune` for an ablation's tuning studies
    job_type: str = "sweep"
    slurm: SlurmOptions = SlurmOptions()  # the file's `launcher:` block

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def path(self) -> Path:
        return self.plan.path

    @property
    def folder(self) -> Path:
        """$NANOLAB_RUNS/sweeps/<name>: plan.json, trials.csv, best.yaml, table.txt (and the default journal)."""
        return self.plan.folder

    @property
    def prunable(self) -> bool:
        return len(self.objectives) == 1 and self.objectives[0].metric in PRUNED_ON_VAL_LOSS

    def run_folder(self, origin: int) -> RunFolder:
        """A trial's run folder, named by the first trial of its parameters (a resumed trial continues it)."""
        return RunStore().folder(self.name, f"trial-{origin}")

    def config(self, params: dict, job_type: str | None = None) -> Config:
        """The experiment with the overrides, `params`, and the study's name, W&B group and tags (the experiment's
        and the group) applied."""
        extra = {"name": self.name, "tracking.group": self.group, "tracking.tags": self.plan.tags(self.group),
                 **({"tracking.job_type": job_type} if job_type else {})}
        return self.plan.config({**extra, **params})

    def describe(self, trials: int | None = None) -> dict:
        """The study as a sweep file would write it (storage password masked), for `--print-config`."""
        return {"sweep": self.name, "objectives": [vars(o) for o in self.objectives],
                "space": {d.key: d.as_written() for d in self.space},
                "sampler": {"name": self.sampler.name, **self.sampler.options},
                "pruner": {"name": self.pruner.name, **self.pruner.options},
                "trials": trials or self.trials, "storage": safe(self.storage)}

    def facts(self) -> dict:
        """What a report says of the sweep: its space as written and its objectives."""
        return {"space": {d.key: d.as_written() for d in self.space}, "objectives": [vars(o) for o in self.objectives]}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.resolved())

    def resolved(self) -> dict:
        """What makes two calls the same study: the experiment with its overrides, the space, the objectives."""
        return {"experiment": self.plan.trained(),
                "space": {d.key: {k: v for k, v in vars(d).items() if k != "key"} for d in self.space},
                "objectives": {o.metric: o.direction for o in self.objectives}}


def load_sweep(path: str | Path, overrides: tuple[str, ...] = (), storage: str | None = None) -> Sweep:
    """Read a sweep file and check everything (every choice built into a Config) before any trial runs."""
    plan, raw = load_plan(path, SweepFile, tuple(overrides), kind="sweep")
    sweep = build_sweep(plan, raw, _storage_url(storage, raw.storage, plan.path, plan.name))
    return dataclasses.replace(sweep, slurm=raw.launcher)


def build_sweep(plan: Plan, raw, storage: str, *, at: str = "",
                group: str | None = None, job_type: str = "sweep") -> Sweep:
    """The Sweep of `plan` from `raw`'s space, objective, sampler, pruner and trials (a sweep file, or an ablation's
    `tune:` block, whose keys errors name with the prefix `at`), each value checked against the experiment."""
    source = str(plan.path)
    space = tuple(_dimension(key, spec, source, at) for key, spec in raw.space.items())
    for key, value in plan.cli:
        if key in raw.space:
            raise SpecError(f"--set {format_override(key, value)}: {key} is swept by `{at}space:` in {source}; set it in one place "
                            "(remove it from --set, or from space)")
    sweep = Sweep(plan, _objectives(raw.objective, source, at), space, _algorithm(raw.sampler, "sampler", source, at),
                  _algorithm(raw.pruner, "pruner", source, at), raw.trials, storage, group or plan.name, job_type)
    for dim in sweep.space:
        for value in dim.values():
            if problem := plan.problem({dim.key: value}):
                where = f"{at}space" if problem.startswith(f"{dim.key} = ") else f"{at}space.{dim.key} = {shown(value)}"
                raise SpecError(f"{source}: {where}: {problem}")
    for kind in ("sampler", "pruner"):
        if problem := optuna_study.algorithm_problem(sweep, kind):
            raise SpecError(f"{source}: {at}{kind}: {problem}")
    return sweep


def _objectives(raw: Any, source: str, at: str) -> tuple[Objective, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SpecError(f"{source}: {at}objective = []: expected {{metric: ..., direction: ...}} or a list of them")
    out = []
    for i, item in enumerate(items):
        prefix = f"{at}objective[{i}]." if isinstance(raw, list) else f"{at}objective."
        out.append(from_dict(Objective, {"metric": item} if isinstance(item, str) else item or {}, source, prefix))
    return tuple(out)


def _dimension(key: str, spec: Any, source: str, at: str) -> Dimension:
    check_key(Config, key, f"{source}: {at}space")
    where = f"{source}: {at}space.{key}"
    kinds = [k for k in DISTRIBUTIONS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1:
        raise SpecError(f"{where} = {shown(spec)}: expected one of {{float: [low, high], log: true}}, "
                        "{int: [low, high], step: n}, {choice: [a, b, ...]}")
    kind = kinds[0]
    for option in spec:
        if option not in (kind, *DISTRIBUTIONS[kind]):
            raise SpecError(f"{where}.{option}: {accepted(option, [kind, *DISTRIBUTIONS[kind]], 'option')}")
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise SpecError(f"{where}.choice = {shown(choices)}: expected a non-empty list of plain values "
                            "(strings, numbers, true/false, null)")
        return Dimension(key, kind, choices=tuple(choices))
    bounds = [_number(b, kind) for b in spec[kind]] if isinstance(spec[kind], list) else []
    if len(bounds) != 2 or None in bounds or bounds[0] >= bounds[1]:
        raise SpecError(f"{where}.{kind} = {shown(spec[kind])}: expected [low, high], {kind}s with low < high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool) or (log and bounds[0] <= 0):
        raise SpecError(f"{where}.log = {shown(log)}: expected true or false; true needs low > 0")
    number = None if step is None else _number(step, kind)
    if step is not None and (number is None or number <= 0 or (log and (kind == "float" or number != 1))):
        raise SpecError(f"{where}.step = {shown(step)}: expected a {kind} > 0, and no step with log: true")
    return Dimension(key, kind, bounds[0], bounds[1], log, number)


def _number(value: Any, kind: str) -> float | int | None:
    """A bound or step as an int (kind int) or float, or None; YAML 1.1 reads `1e-3` as a string."""
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    try:
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _algorithm(raw: Any, kind: str, source: str, at: str) -> Algorithm:
    """`name` or `{name: ..., option: value, ...}` (name defaults to tpe / median); unknown options are refused."""
    options = dict(raw) if isinstance(raw, dict) else {"name": raw}
    name = options.pop("name", DEFAULTS[kind])
    names = optuna_study.algorithm_names(kind)
    if name not in names:
        key = f"{kind}.name" if isinstance(raw, dict) else kind
        raise SpecError(f"{source}: {at}{key} = {shown(name)}: {accepted(name, names, kind)}")
    allowed = optuna_study.algorithm_options(kind, name)
    for option in options:
        if option not in allowed:
            raise SpecError(f"{source}: {at}{kind}.{option}: {accepted(option, allowed, f'option of the {name} {kind}')}")
    return Algorithm(name, options)


def _storage_url(cli: str | None, in_file: str | None, path: Path, name: str) -> str:
    """--storage wins over the file's `storage:`; a plain path (relative to cwd or the file) is a journal file."""
    if cli:
        return cli if "://" in cli else str(Path(cli).resolve())
    if in_file:
        return in_file if "://" in in_file else str((path.parent / in_file).resolve())
    return str(RunStore().journal(name))
