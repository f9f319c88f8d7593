"""Tuned ablations: before a variant's seeds run, a small study over the `tune:` keys picks that variant's values,
so that no variant is compared at a learning rate that suits another (Melis et al. 2018, "On the State of the
Art of Evaluation in Neural Language Models", found tuned LSTMs beating newer architectures).

    tune:                                   # in an ablation file
      space: {train.lr: {float: [3.0e-4, 1.0e-2], log: true}}   # a sweep file's space format
      trials: 6                             # per variant
      sampler: {name: tpe, seed: 0}         # default tpe
      pruner: none                          # default none
      objective: val/loss                   # default {metric: val/loss, direction: minimize}
      overrides: {train.max_iters: 300}     # the tuning runs only (a shorter budget), before --set

Variant `position=rotary` of ablation `position_tuned` is tuned by the study `position_tuned-tune-position=rotary`,
a sweep like any other: its runs are `$NANOLAB_RUNS/<study>/trial-N` (W&B group `position_tuned-tune`, job type
`tune`), its journal, trials.csv and best.yaml are in `$NANOLAB_RUNS/sweeps/<study>/`. Tuning runs train at the
experiment's own seed. A study that has begun all its trials is not run again; an interrupted one continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanolab.config import NAME_PATTERN, NAME_RULE, Config, ConfigError
from nanolab.errors import SpecError
from nanolab.launcher import Launcher
from nanolab.plan import Plan
from nanolab.runfolder import runs_root
from nanolab.spec import normalize_overrides, parse_override
from nanolab.config import from_dict

TUNE_JOB_TYPE = "tune"


@dataclass(frozen=True)
class TuneBlock:
    """An ablation file's `tune:` block as written (the keys a sweep file uses for its study, and overrides)."""

    space: Any = None
    trials: int = 8
    sampler: Any = "tpe"
    pruner: Any = "none"
    objective: Any = None
    overrides: Any = None

    def __post_init__(self):
        if not isinstance(self.space, dict) or not self.space:
            raise ConfigError("space", self.space, "expected at least one dotted key with a distribution")
        if self.trials < 1:
            raise ConfigError("trials", self.trials, "must be >= 1")


def tuning_sweeps(plan: Plan, raw: Any, varied: list[str], variants: dict[str, tuple[str, ...]],
                  cli_overrides: tuple[str, ...]) -> dict:
    """variant id -> the Sweep that tunes it, every one checked before anything runs; `variants` maps a variant
    id to its overrides, `plan.overrides` ends with `cli_overrides`."""
    from nanolab.sweep.schema import build_sweep  # optuna is imported only by ablations that tune

    source = str(plan.path)
    block = from_dict(TuneBlock, raw, source, "tune.")
    for key in block.space:
        if key in varied:
            raise SpecError(f"{source}: tune.space.{key}: the ablation varies this key; tune other keys")
    tune_overrides = normalize_overrides(block.overrides, source, "tune.overrides")
    for text in tune_overrides:
        parse_override(text, Config, f"{source}: tune.overrides")
    file_overrides = plan.overrides[:len(plan.overrides) - len(cli_overrides)]
    sweeps = {}
    for variant_id, overrides in variants.items():
        name = f"{plan.name}-tune-{variant_id}"
        if not NAME_PATTERN.match(name):
            raise SpecError(f"{source}: the tuning study of {variant_id} would be named {name!r}: {NAME_RULE}; "
                            "shorten the ablation's name or its grid values")
        cell_plan = Plan(plan.path, name, plan.experiment, (*file_overrides, *overrides, *tune_overrides,
                                                            *cli_overrides))
        storage = str((runs_root() / "sweeps" / name / "journal.log").resolve())
        sweeps[variant_id] = build_sweep(cell_plan, block, storage, cli_overrides, at="tune.",
                                         group=f"{plan.name}-tune", job_type=TUNE_JOB_TYPE)
    return sweeps


def tune(sweeps: dict, launcher: Launcher) -> tuple[bool, dict[str, dict]]:
    """Run each variant's study until it has begun its trials; returns (not interrupted, variant id -> the best
    trial's parameters) for the variants whose study has a completed trial."""
    from nanolab.sweep import SweepStudy, optimize, params_text, write_results

    best = {}
    for variant_id, sweep in sweeps.items():
        study = SweepStudy.create(sweep)
        new = max(0, sweep.trials - study.started())
        if new or study.waiting():
            print(f"tuning {variant_id}: {sweep.trials} trials of {', '.join(d.key for d in sweep.space)}, "
                  f"{sweep.trials - new} begun before; study {sweep.name}", flush=True)
            completed, _ = optimize(sweep, study, new, launcher)
            write_results(sweep, study)
            if not completed:
                return False, best
        if ranked := study.ranked():
            best[variant_id] = dict(ranked[0].params)
            print(f"tuned {variant_id}: {params_text(best[variant_id])} ({sweep.objectives[0].metric} {ranked[0].values[0]:.4f}, "
                  f"trial {ranked[0].number})", flush=True)
        else:
            print(f"nanolab: tuning {variant_id}: no trial completed ({sweep.folder / 'table.txt'}); "
                  "its runs are skipped", flush=True)
    return True, best
