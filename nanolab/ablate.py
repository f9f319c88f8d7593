"""`nanolab ablate FILE`: every cell of a grid of overrides x every seed is one run.

    # experiments/ablations/activation.yaml
    name: activation                     # default: the file's stem; the W&B group and the runs' folder
    experiment: ../baseline.yaml         # relative to this file
    overrides: [train.max_iters=600]     # for every run (a list of KEY=VALUE, or a mapping)
    grid: {model.activation: [relu, gelu, relu2, swiglu]}   # the product of all keys
    # or, instead of grid, named variants (leave-one-out: each undoes one change; {} is the experiment itself):
    # variants: {record: {}, learned: {model.position: learned}, adamw: {train.optimizer: adamw}}
    seeds: [1, 2, 3]                     # or {min: 2, max: 10, step: 1} with a decide: block: sequential seeds,
                                         # run in rounds until each variant is decided (nanolab.rounds)
    tune: {space: {train.lr: {float: [3e-4, 1e-2], log: true}}, trials: 6}   # optional: see nanolab.tuning
    launcher: {partition: gpu, gpus: 1, time: 60}                    # optional: for --launcher slurm

Run `<variant>-s<seed>` lives in `$NANOLAB_RUNS/<name>/`: the variant's id is its label (`activation=relu`, a
named variant's name) when that is a safe folder name and no other variant's, else `v-<hash of its values>`
(a data path, say, which is relative to this file); the label stays in meta.json and in tables. The file is
resolved once (nanolab.plan): an edit made while the ablation runs changes none of its cells, and the next call
after an edit stops in one line naming what changed; more seeds extend the same plan. With `tune:`, each
variant's study runs first and the variant's seeds run at its best trial's values (in meta.json's `tuned`).
Repeating the command skips runs that ended (finished, diverged), continues the ones that stopped with a
checkpoint, and sets aside (renames, never deletes) any other before starting it again. This module proposes
the cells; a launcher (nanolab.launch: local processes, or a Slurm job per cell) runs them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from nanolab import rounds
from nanolab.config import NAME_PATTERN, NAME_RULE, Config, ConfigError
from nanolab.config_dicts import check_key, flatten, from_dict
from nanolab.errors import SpecError
from nanolab.launch import Board, Launched, Launcher, LaunchOptions, Outcome, SlurmOptions, Task, open_launcher
from nanolab.plan import Plan, ended, fingerprint, load_plan, run_outcome, start_or_resume
from nanolab.runfolder import RunFolder, RunStore, variant_ids
from nanolab.scale import ladder
from nanolab.sequential import Decide, Design, SeedDesign
from nanolab.spec import format_override, parse_changes
from nanolab.tuning import tune, tuning_sweeps
from nanolab.vocab import BEST_VAL_LOSS, RunStatus


@dataclass(frozen=True)
class AblationFile:
    experiment: str
    grid: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)  # name -> {dotted key: value}: the runs, when not a grid's product
    name: str | None = None
    overrides: Any = None  # a list of KEY=VALUE or a mapping; normalised by `load_plan`
    seeds: Any = field(default_factory=lambda: [1337])  # a list, or {min, max, step}: a `nanolab.sequential` design
    decide: Any = None  # with sequential seeds: a `nanolab.sequential.Decide`
    tune: Any = None  # a `nanolab.tuning.TuneBlock`, read by `tuning_sweeps`
    launcher: SlurmOptions = field(default_factory=SlurmOptions)
    scale: Any = None  # a `nanolab.scale.ScaleBlock`: every variant at every size x budget

    def __post_init__(self):
        if bool(self.grid) == bool(self.variants) and not (self.scale and not self.grid):
            raise ConfigError("grid", self.grid or None, "expected a grid (dotted key -> list of values) or named "
                              "variants (name -> {dotted key: value}), one of them (or neither beside a scale: block)")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key}", values, "expected a non-empty list of values")
        for name, overrides in self.variants.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"variants.{name}", overrides, "expected a mapping of dotted keys ({} for the "
                                  "experiment itself)")
            if not NAME_PATTERN.match(str(name)):
                raise ConfigError("variants", name, f"a variant's name {NAME_RULE} (it names its runs)")
        if isinstance(self.seeds, dict) != (self.decide is not None):
            raise ConfigError("decide" if self.decide is not None else "seeds", self.decide or self.seeds,
                              "a sequential ablation has both seeds: {min, max, step} and a decide: block; "
                              "a fixed one a list of seeds and no decide:")
        if not isinstance(self.seeds, dict) and not (isinstance(self.seeds, list) and self.seeds and all(
                isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)):
            raise ConfigError("seeds", self.seeds, "expected a non-empty list of integers, or {min, max, step} "
                              "with a decide: block (seeds until the answer is clear)")


MAX_TAG = 64  # W&B's limit: a longer label piece (a path) is tagged with the variant's id


def label(variant: dict) -> str:
    """{'model.activation': 'relu', 'train.lr': 0.001} -> 'activation=relu,lr=0.001'"""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in variant.items())


@dataclass(frozen=True)
class Cell:
    """One run of the ablation: a variant (its values of every key the ablation varies) and a seed."""

    variant_id: str  # the store's id of the variant: its label when that is a safe folder name, else a hash
    label: str  # readable: 'activation=relu', or a named variant's name
    variant: dict  # dotted key -> value, for every key the ablation varies
    seed: int

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
    design: Design | None = None  # sequential seeds: cells hold seeds 1..max, rounds run them (nanolab.rounds)
    # `variants:` name -> its changes to the experiment ({}: the experiment itself), when it has no scale: block;
    # such an ablation is compared by its variants' names, not by the union of the keys they change
    named: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.plan.name

    def folder(self, cell: Cell) -> RunFolder:
        return RunStore().folder(self.name, cell.run_id)

    def tags(self, cell: Cell) -> list[str]:
        """The experiment's tags, the ablation's name and the cell's variant (one tag per changed key)."""
        return self.plan.tags(self.name, *(piece if len(piece) <= MAX_TAG else cell.variant_id
                                           for piece in cell.label.split(",")))

    def config(self, cell: Cell, tuned: dict | None = None) -> Config:
        """The cell's config from the snapshot, at its variant's tuned values."""
        return self.plan.config({**cell.variant, **(tuned or {}), "seed": cell.seed, "name": self.name,
                                 "tracking.group": self.name, "tracking.job_type": "ablate", "tracking.tags": self.tags(cell)})

    def resolved(self) -> dict:
        """What makes two calls the same ablation: the experiment, every variant, each variant's tuning study.
        Seeds are not in it: running more seeds of the same cells extends the plan."""
        return {"experiment": self.plan.trained(), "variants": {c.variant_id: c.variant for c in self.cells},
                **({"tune": {v: sweep.resolved() for v, sweep in self.tuning.items()}} if self.tuning else {}),
                **({"sequential": dataclasses.asdict(self.design)} if self.design else {})}

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.resolved())

    def facts(self) -> dict:
        """What a report says of the ablation: each varied key's values, the baseline, whether it tuned."""
        keys = list(self.cells[0].variant)
        return {"varied": {key: list(dict.fromkeys(cell.variant[key] for cell in self.cells)) for key in keys},
                "baseline": self.baseline, "tuned": bool(self.tuning), **({"named": self.named} if self.named else {})}


def load_ablation(path, seeds: list[int] | None = None, extra: tuple[str, ...] = ()) -> Ablation:
    """Read an ablation file and build (and validate) the config of every cell before anything runs."""
    plan, raw = load_plan(path, AblationFile, tuple(extra))
    for where, keys in [("grid", raw.grid), *((f"variants.{n}", o) for n, o in raw.variants.items())]:
        for key in keys:
            check_key(Config, key, f"{plan.path}: {where}")
    base = flatten(plan.base)
    keys = list(raw.grid) or list(dict.fromkeys(k for overrides in raw.variants.values() for k in overrides))
    for key, value in plan.cli:
        if key in keys:
            raise SpecError(f"--set {format_override(key, value)}: {key} is varied by `{'grid' if raw.grid else 'variants'}"
                            f":` in {plan.path}; set it in one place (remove it from --set, or from the file)")
    named = [(name, {key: own.get(key, base[key]) for key in keys}) for name, own in raw.variants.items()]
    products = [(label(dict(zip(keys, values))), dict(zip(keys, values)))
                for values in itertools.product(*raw.grid.values())] if raw.grid else []
    variants = [(text, parse_changes(written, plan.path, "grid")) for text, written in named or products]
    variants = ladder(plan, raw.scale, variants)  # each at every size x budget, with a `scale:` block
    keyed = [(json.dumps(variant, sort_keys=True, default=str), text, variant) for text, variant in variants]
    ids = variant_ids({key: text.replace(",", "_") for key, text, _ in keyed})
    design = sequential_design(plan, raw, seeds)
    seeds = list(range(1, design.seeds.max + 1)) if design else seeds or raw.seeds
    cells = [Cell(ids[key], text, variant, seed) for key, text, variant in keyed for seed in seeds]
    ablation = Ablation(plan, tuple(cells), None, slurm=raw.launcher, design=design)
    for cell in cells:  # every cell is checked before the first run starts
        try:
            ablation.config(cell)
        except SpecError as exc:
            raise SpecError(f"{plan.path}: run {cell.run_id}: {str(exc).removeprefix(f'{plan.path}: ')}") from None
    baseline = {key: base[key] for key in keys}
    tuning = {} if raw.tune is None else tuning_sweeps(plan, raw.tune, keys, {c.variant_id: c.variant for c in cells})
    if design and not any(c.variant == baseline for c in cells):
        raise SpecError(f"{plan.path}: decide: a sequential ablation compares each variant with the baseline, the "
                        f"experiment's own values ({label(baseline)}); add them to the "
                        f"{'grid' if raw.grid else 'variants'}")
    named = ({name: {k: v for k, v in variant.items() if v != baseline[k]} for name, variant in variants}
             if raw.variants and not raw.scale else {})
    return dataclasses.replace(ablation, baseline=baseline if any(c.variant == baseline for c in cells) else None,
                               tuning=tuning, named=named)


def sequential_design(plan: Plan, raw: AblationFile, seeds: list[int] | None) -> Design | None:
    """The file's `seeds: {min, max, step}` and `decide:` block, checked; None for a fixed list of seeds."""
    if not isinstance(raw.seeds, dict):
        return None
    if seeds:
        raise SpecError(f"--seeds {' '.join(map(str, seeds))}: {plan.path} chooses its seeds as it goes (seeds: "
                        "{min, max, step}); change seeds.max to allow more")
    source = str(plan.path)
    return Design(from_dict(SeedDesign, raw.seeds, source, "seeds."), from_dict(Decide, raw.decide, source, "decide."))


def run_cell(ablation: Ablation, cell: Cell, tuned: dict, *, progress: bool) -> Outcome:
    """Run (or continue) one cell, at its variant's `tuned` values."""
    meta = {"variant": cell.variant, "label": cell.label, "ablation": ablation.name,
            "plan_fingerprint": ablation.fingerprint, **({"tuned": tuned} if ablation.tuning else {})}
    return run_outcome(start_or_resume(ablation.config(cell, tuned), ablation.folder(cell), progress=progress,
                                       meta=meta))


def run_ablation(ablation: Ablation, launcher: Launcher) -> tuple[Launched, dict[str, Outcome]]:
    """Run every cell not yet done (after its variant's study, when the ablation tunes), or a sequential
    ablation's rounds; returns how the launch ended and run id -> outcome of the cells that ended in this call."""
    ablation.plan.record(ablation.resolved(), ablation.facts())
    if ablation.design:
        return run_rounds(ablation, launcher)
    return run_cells(ablation, list(ablation.cells), launcher, f"ablation {ablation.name}")


def run_rounds(ablation: Ablation, launcher: Launcher) -> tuple[Launched, dict[str, Outcome]]:
    """Round after round until every variant is decided or seeds.max is reached (nanolab.rounds)."""
    looks, results = rounds.read_looks(ablation), {}
    for look in looks:
        print(f"ablation {ablation.name}: {rounds.look_line(look)} (recorded)", flush=True)
    while (proposal := rounds.next_round(ablation, looks)) is not None:
        n, cells = proposal
        launched, ran = run_cells(ablation, cells, launcher, f"ablation {ablation.name}, round at {n} seeds")
        results.update(ran)
        if launched is not Launched.DONE:
            return launched, results
        values = {c.run_id: ablation.folder(c).read_summary().get(ablation.design.decide.metric) for c in cells}
        if missing := [run_id for run_id, value in values.items() if value is None]:
            print(f"nanolab: ablation {ablation.name}: no {ablation.design.decide.metric} from {', '.join(missing)}; "
                  f"the look at {n} seeds waits for them (rerun the command once they finish)", flush=True)
            results.update({run_id: results.get(run_id, Outcome(RunStatus.FAILED, "no metric")) for run_id in missing})
            return Launched.DONE, results
        looks = rounds.decide(ablation, looks, n, values)
        print(f"ablation {ablation.name}: {rounds.look_line(looks[-1])}", flush=True)
    return Launched.DONE, results


def run_cells(ablation: Ablation, cells: list[Cell], launcher: Launcher,
              what: str) -> tuple[Launched, dict[str, Outcome]]:
    todo = [c for c in cells if not ended(ablation.folder(c))]
    print(f"{what}: {len(cells)} runs, {len(cells) - len(todo)} already done, {len(todo)} to run", flush=True)
    results: dict[str, Outcome] = {}
    tuned: dict[str, dict] = {}
    if ablation.tuning and todo:
        launched, tuned = tune({c.variant_id: ablation.tuning[c.variant_id] for c in todo}, launcher)
        if launched is not Launched.DONE:
            return launched, results
        untuned = Outcome(RunStatus.FAILED, "its variant's study completed no trial")
        results.update({c.run_id: untuned for c in todo if c.variant_id not in tuned})
        todo = [c for c in todo if c.variant_id in tuned]
    tasks = iter([Task(c.run_id, ablation.folder(c).path, run_cell, (ablation, c, tuned.get(c.variant_id, {})))
                  for c in todo])

    def on_end(task: Task, outcome: Outcome) -> None:
        results[task.label] = outcome

    return launcher.run(lambda: next(tasks, None), on_end, Board(len(todo), BEST_VAL_LOSS)), results


def ablate(path, seeds: list[int] | None = None, workers: int = 1,
           overrides: tuple[str, ...] = ()) -> tuple[Ablation, dict[str, RunStatus]]:
    """Python's `nanolab ablate FILE --workers N`: the ablation and run id -> status of the cells run now."""
    ablation = load_ablation(path, seeds, tuple(overrides))
    _, results = run_ablation(ablation, open_launcher(LaunchOptions(workers=workers), ablation.plan.folder))
    return ablation, {run_id: outcome.status for run_id, outcome in results.items()}


def describe(ablation: Ablation, run_id: str) -> dict:
    """A cell's run as `nanolab status` shows it: its status and best val/loss."""
    folder = RunStore().folder(ablation.name, run_id)
    best = folder.read_summary().get(BEST_VAL_LOSS) if folder.is_run() else None
    return {"status": folder.status.value if folder.status else "not started", BEST_VAL_LOSS: best}
