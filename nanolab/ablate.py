"""`nanolab ablate FILE`: every cell of a grid of overrides x every seed is one run.

    # experiments/ablations/activation.yaml
    name: activation                     # default: the file's stem; the W&B group and the runs' folder
    experiment: ../baseline.yaml         # relative to this file
    overrides: [train.max_iters=600]     # for every run (a list of KEY=VALUE, or a mapping)
    grid: {model.activation: [relu, gelu, relu2, swiglu]}   # the product of all keys
    # or, instead of grid, named variants (leave-one-out: each undoes one change; {} is the experiment itself):
    # variants: {record: {}, learned: {model.position: learned}, adamw: {train.optimizer: adamw}}
    seeds: [1, 2, 3]
    tune: {space: {train.lr: {float: [3e-4, 1e-2], log: true}}, trials: 6}   # optional: see nanolab.tuning
    launcher: {partition: gpu, gpus: 1, time: 60}                    # optional: for --launcher slurm

Run `<variant>-s<seed>` lives in `$NANOLAB_RUNS/<name>/` (a named variant's id is its name). With `tune:`, each
variant's study runs first and the variant's seeds run at its best trial's values (in meta.json's `tuned`).
Repeating the command skips runs that ended (finished, diverged), continues the ones that stopped with a
checkpoint, and sets aside (renames, never deletes) any other before starting it again. The plan file and the
launcher are shared with `nanolab sweep`.
With `--launcher slurm` every cell that is neither done nor queued is submitted as a Slurm job (nanolab.slurm).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from nanolab.config import NAME_PATTERN, NAME_RULE, Config, ConfigError
from nanolab.errors import NanolabError, SpecError
from nanolab.launcher import Board, LocalLauncher, Outcome, Task
from nanolab.plan import Plan, ended, load_plan, run_outcome, start_or_resume
from nanolab.runfolder import RunFolder, RunStore
from nanolab import slurm
from nanolab.slurm import Job, SlurmLauncher, SlurmOptions
from nanolab.spec import format_override
from nanolab.config import check_key, flatten, to_dict
from nanolab.tuning import tune, tuning_sweeps
from nanolab.vocab import BEST_VAL_LOSS, ENDED, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, RunStatus


@dataclass(frozen=True)
class AblationFile:
    experiment: str
    grid: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # name -> {dotted key: value}: the runs, when not a grid's product
    name: str | None = None
    overrides: Any = None  # a list of KEY=VALUE or a mapping; normalised by `load_plan`
    seeds: list = field(default_factory=lambda: [1337])
    tune: Any = None  # a `nanolab.tuning.TuneBlock`, read by `tuning_sweeps`
    launcher: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self):
        if bool(self.grid) == bool(self.variants):
            raise ConfigError("grid", self.grid or None, "expected a grid (dotted key -> list of values) or named "
                              "variants (name -> {dotted key: value}), one of them")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key}", values, "expected a non-empty list of values")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"variants.{name}", overrides, "expected a mapping of dotted keys ({} for the "
                                  "experiment itself)")
            if not NAME_PATTERN.match(str(name)):
                raise ConfigError("variants", name, f"a variant's name {NAME_RULE} (it names its runs)")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError("seeds", self.seeds, "expected a non-empty list of integers")


def label(variant: dict) -> str:
    """{'model.activation': 'relu', 'train.lr': 0.001} -> 'activation=relu,lr=0.001'"""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in variant.items())


@dataclass(frozen=True)
class Cell:
    """One run of the ablation: a variant of the grid and a seed, as overrides of the experiment."""

    variant: dict  # dotted key -> value, for every key the ablation varies
    seed: int
    overrides: tuple[str, ...]
    name: str | None = None  # a named variant's

    @property
    def variant_id(self) -> str:
        return self.name or label(self.variant).replace(",", "_")

    @property
    def run_id(self) -> str:
        return f"{self.variant_id}-s{self.seed}"


@dataclass(frozen=True)
class Ablation:
    plan: Plan
    cells: tuple[Cell, ...]
    baseline: dict | None  # the experiment's own values of the grid keys, when the grid holds them
    tuning: dict = field(default_factory=dict)  # variant id -> the Sweep that tunes it (with a `tune:` block)
    slurm: SlurmOptions = SlurmOptions()

    @property
    def name(self) -> str:
        return self.plan.name

    def folder(self, cell: Cell) -> RunFolder:
        return RunStore().folder(self.name, cell.run_id)


def load_ablation(path, seeds: list[int] | None = None, extra: tuple[str, ...] = ()) -> Ablation:
    """Read an ablation file and build (and validate) the config of every cell before anything runs."""
    plan, raw = load_plan(path, AblationFile, tuple(extra))
    for where, keys in [("grid", raw.grid), *((f"variants.{n}", o) for n, o in raw.variants.items())]:
        for key in keys:
            check_key(Config, key, f"{plan.path}: {where}")
    base = flatten(to_dict(plan.config()))
    keys = list(raw.grid) or list(dict.fromkeys(k for overrides in raw.variants.values() for k in overrides))
    named = [(name, {key: own.get(key, base[key]) for key in keys}, own) for name, own in raw.variants.items()]
    products = [(None, dict(zip(keys, values)), dict(zip(keys, values))) for values in itertools.product(
        *raw.grid.values())] if raw.grid else []
    cells = []
    for name, variant, own in named or products:
        tags = format_override("tracking.tags", [plan.name, *([name] if name else label(variant).split(","))])
        for seed in seeds or raw.seeds:
            overrides = (*(format_override(k, v) for k, v in own.items()), f"seed={seed}", f"name={plan.name}",
                         f"tracking.group={plan.name}", "tracking.job_type=ablate", tags)
            cell = Cell(variant, seed, overrides, name)
            if problem := plan.problem(overrides):  # every cell is checked before the first run starts
                raise SpecError(f"{plan.path}: run {cell.run_id}: {problem}")
            cells.append(cell)
    baseline = {key: base[key] for key in keys}
    tuning = {} if raw.tune is None else tuning_sweeps(
        plan, raw.tune, keys, {c.variant_id: tuple(format_override(k, v) for k, v in c.variant.items())
                               for c in cells}, tuple(extra))
    return Ablation(plan, tuple(cells), baseline if any(c.variant == baseline for c in cells) else None, tuning,
                    raw.launcher)


def run_cell(ablation: Ablation, cell: Cell, tuned: dict, *, progress: bool) -> Outcome:
    """Run (or continue) one cell, at its variant's `tuned` values."""
    cfg = ablation.plan.config((*cell.overrides, *(format_override(k, v) for k, v in tuned.items())))
    meta = {"variant": cell.variant, "ablation": ablation.name, **({"tuned": tuned} if ablation.tuning else {})}
    return run_outcome(start_or_resume(cfg, ablation.folder(cell), progress=progress, meta=meta))


def ablate(path, seeds: list[int] | None = None, workers: int = 1,
           overrides: tuple[str, ...] = ()) -> tuple[Ablation, dict[str, RunStatus]]:
    """Run every cell not yet done; returns the ablation and run id -> status of the cells run in this call."""
    ablation, launcher = load_ablation(path, seeds, tuple(overrides)), LocalLauncher(workers)
    todo = [c for c in ablation.cells if not ended(ablation.folder(c))]
    print(f"ablation {ablation.name}: {len(ablation.cells)} runs, {len(ablation.cells) - len(todo)} already done, "
          f"{len(todo)} to run with {workers} worker(s)", flush=True)
    results: dict[str, RunStatus] = {}
    tuned: dict[str, dict] = {}
    if ablation.tuning and todo:
        completed, tuned = tune({c.variant_id: ablation.tuning[c.variant_id] for c in todo}, launcher)
        if not completed:
            return ablation, {"tuning": RunStatus.INTERRUPTED}
        results.update({c.run_id: RunStatus.FAILED for c in todo if c.variant_id not in tuned})
        todo = [c for c in todo if c.variant_id in tuned]
    tasks = iter([Task(c.run_id, ablation.folder(c).path, run_cell, (ablation, c, tuned.get(c.variant_id, {})))
                  for c in todo])

    def on_end(task: Task, outcome: Outcome) -> None:
        results[task.label] = outcome.status

    launcher.run(lambda: next(tasks, None), on_end, Board(len(todo), BEST_VAL_LOSS))
    return ablation, results


def submit(ablation: Ablation, options: SlurmOptions, wait: bool) -> dict[str, RunStatus]:
    """Submit every cell that is neither done nor queued as a Slurm job; with `wait`, follow all of them."""
    if ablation.tuning:
        raise NanolabError(f"{ablation.plan.path}: tune: runs with the local launcher only; run the ablation "
                           "without --launcher slurm, or tune it in a sweep file with --launcher slurm")
    launcher = SlurmLauncher(options, RunStore().root / ablation.name)
    queued = launcher.queued()
    done = [c for c in ablation.cells if ended(ablation.folder(c))]
    todo = [c for c in ablation.cells if c not in done and c.run_id not in queued]
    print(f"ablation {ablation.name}: {len(ablation.cells)} runs, {len(done)} already done, {len(queued)} in Slurm's "
          f"queue, {len(todo)} to submit", flush=True)
    jobs = {c.run_id: Job(Task(c.run_id, ablation.folder(c).path, run_cell, (ablation, c, {})))
            for c in ablation.cells if c not in done}
    launcher.submit([jobs[c.run_id] for c in todo])
    results: dict[str, RunStatus] = {}
    if wait or options.cluster == "local":  # the local executor's jobs are this process's children
        launcher.follow(list(jobs.values()), Board(len(jobs), BEST_VAL_LOSS),
                        lambda task, outcome: results.__setitem__(task.label, outcome.status))
    return results


def status(ablation: Ablation, options: SlurmOptions) -> str:
    """Each cell: its Slurm job and state (when it was submitted), its run's status and best val/loss."""
    def describe(run_id: str) -> str:
        folder = ablation.folder(next(c for c in ablation.cells if c.run_id == run_id))
        best = folder.read_summary().get(BEST_VAL_LOSS) if folder.is_run() else None
        return f"{folder.status or 'not started'}" + (f", {BEST_VAL_LOSS} {best:.4f}" if best is not None else "")

    launcher = SlurmLauncher(options, RunStore().root / ablation.name)
    return launcher.jobs_table([c.run_id for c in ablation.cells], describe)


def ablate_command(args) -> int:
    from nanolab.analysis import compare_command

    if args.launcher == "local":
        ablation, results = ablate(args.ablation_file, args.seeds, args.workers, tuple(args.set))
    else:
        ablation = load_ablation(args.ablation_file, args.seeds, tuple(args.set))
        results = submit(ablation, slurm.options(ablation.slurm, args), args.wait)
        if not results:
            print(f"follow them: nanolab status {args.ablation_file}")
            return EXIT_OK
    print(compare_command([RunStore().root / ablation.name], group=ablation.name, baseline=ablation.baseline))
    if RunStatus.INTERRUPTED in results.values():
        return EXIT_SIGINT
    return EXIT_OK if all(status in ENDED for status in results.values()) else EXIT_FAILED
