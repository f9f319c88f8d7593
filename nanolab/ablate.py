"""`nanolab ablate FILE`: every cell of a grid of overrides x every seed is one run.

    # experiments/ablations/activation.yaml
    name: activation                     # default: the file's stem; the W&B group and the runs' folder
    experiment: ../baseline.yaml         # relative to this file
    overrides: [train.max_iters=600]     # for every run (a list of KEY=VALUE, or a mapping)
    grid: {model.activation: [relu, gelu, relu2, swiglu]}   # the product of all keys
    seeds: [1, 2, 3]

Run `<variant>-s<seed>` lives in `$NANOLAB_RUNS/<name>/`. Repeating the command skips runs that ended
(finished, diverged), resumes interrupted ones from their checkpoint, and sets aside (renames, never deletes)
a run that crashed before starting it again.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from nanolab.checkpoint import read_json
from nanolab.config import Config, ConfigError
from nanolab.errors import SpecError
from nanolab.runner import run, runs_root
from nanolab.spec import (check_key, flatten, format_override, from_dict, load_spec, normalize_overrides,
                          parse_override, read_yaml, to_dict)

DONE = ("finished", "diverged")  # a diverged variant is a result, not a failure to retry


@dataclass(frozen=True)
class AblationFile:
    experiment: str
    grid: dict
    name: str | None = None
    overrides: Any = None  # a list of KEY=VALUE or a mapping; normalised by `load_ablation`
    seeds: list = field(default_factory=lambda: [1337])

    def __post_init__(self):
        if not self.grid:
            raise ConfigError("grid", self.grid, "expected at least one key with a list of values")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{key}", values, "expected a non-empty list of values")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ConfigError("seeds", self.seeds, "expected a non-empty list of integers")


def label(variant: dict) -> str:
    """{'model.activation': 'relu', 'train.lr': 0.001} -> 'activation=relu,lr=0.001'"""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in variant.items())


@dataclass(frozen=True)
class Cell:
    """One run of the ablation: a variant of the grid and a seed, as overrides of the experiment."""

    variant: dict  # dotted key -> value
    seed: int
    overrides: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return f"{label(self.variant).replace(',', '_')}-s{self.seed}"


@dataclass(frozen=True)
class Ablation:
    name: str
    experiment: Path
    cells: tuple[Cell, ...]
    baseline: dict | None  # the experiment's own values of the grid keys, when the grid holds them


def load_ablation(path: str | Path, seeds: list[int] | None = None, extra: tuple[str, ...] = ()) -> Ablation:
    """Read an ablation file and build (and validate) the config of every cell before anything runs."""
    path = Path(path)
    plan = from_dict(AblationFile, read_yaml(path), str(path))
    name = plan.name or path.stem
    experiment = path.parent / plan.experiment
    if not experiment.is_file():
        raise SpecError(f"{path}: experiment = {plan.experiment!r}: no such file {experiment}")
    shared = normalize_overrides(plan.overrides, str(path)) + tuple(extra)
    for text in shared:
        parse_override(text, Config, source=f"{path}: overrides")
    for key in plan.grid:
        check_key(Config, key, f"{path}: grid")
    cells = []
    for values in itertools.product(*plan.grid.values()):
        variant = dict(zip(plan.grid, values))
        tags = format_override("tracking.tags", [name, *label(variant).split(",")])
        for seed in seeds or plan.seeds:
            overrides = (*shared, *(format_override(k, v) for k, v in variant.items()), f"seed={seed}",
                         f"name={name}", f"tracking.group={name}", "tracking.job_type=ablate", tags)
            cell = Cell(variant, seed, overrides)
            try:  # every cell is checked before the first run starts
                load_spec(experiment, overrides)
            except SpecError as exc:
                raise SpecError(f"{path}: run {cell.run_id}: {exc}") from None
            cells.append(cell)
    base = flatten(to_dict(load_spec(experiment, shared)))
    baseline = {key: base[key] for key in plan.grid}
    return Ablation(name, experiment, tuple(cells), baseline if any(c.variant == baseline for c in cells) else None)


def status_of(run_dir: Path) -> str | None:
    meta = run_dir / "meta.json"
    return read_json(meta).get("status") if meta.is_file() else None


def set_aside(run_dir: Path) -> Path:
    """Rename a crashed run out of the way (kept for inspection) so the cell can start again."""
    for attempt in itertools.count(1):
        target = run_dir.with_name(f"{run_dir.name}.attempt{attempt}")
        if not target.exists():
            run_dir.rename(target)
            return target


def run_cell(ablation: Ablation, cell: Cell, show_progress: bool, threads: int | None = None) -> tuple[str, str]:
    """Run (or resume) one cell; returns (run_id, status)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_dir = runs_root() / ablation.name / cell.run_id
    status = status_of(run_dir)
    cfg = load_spec(ablation.experiment, cell.overrides)
    meta = {"variant": cell.variant, "ablation": ablation.name}
    if status == "interrupted" or (status == "running" and (run_dir / "ckpt" / "last.pt").is_file()):
        return cell.run_id, run(cfg, resume_dir=run_dir, show_progress=show_progress).status
    if run_dir.exists():
        print(f"nanolab: {run_dir} ended as {status or 'unknown'}; moved to {set_aside(run_dir)}")
    return cell.run_id, run(cfg, run_id=cell.run_id, extra_meta=meta, show_progress=show_progress).status


def ablate(path: str | Path, seeds: list[int] | None = None, workers: int = 1,
           overrides: tuple[str, ...] = ()) -> tuple[Ablation, dict[str, str]]:
    """Run every cell not yet done; returns the ablation and run id -> status of the cells run in this call."""
    ablation = load_ablation(path, seeds, tuple(overrides))
    todo = [c for c in ablation.cells if status_of(runs_root() / ablation.name / c.run_id) not in DONE]
    print(f"ablation {ablation.name}: {len(ablation.cells)} runs, {len(ablation.cells) - len(todo)} already done, "
          f"{len(todo)} to run with {workers} worker(s)")
    if workers <= 1:
        return ablation, dict(run_cell(ablation, cell, show_progress=True) for cell in todo)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, ablation, cell, False, threads) for cell in todo]
        results = {}
        for future in futures:
            run_id, status = future.result()
            results[run_id] = status
            print(f"  {run_id}: {status}")
        return ablation, results


def ablate_command(args) -> int:
    from nanolab.analysis import compare_command

    ablation, results = ablate(args.ablation_file, args.seeds, args.workers, tuple(args.set))
    print(compare_command([runs_root() / ablation.name], group=ablation.name, baseline=ablation.baseline))
    return 0 if all(status in DONE for status in results.values()) else 1
