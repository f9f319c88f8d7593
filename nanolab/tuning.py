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
experiment's own seed. A study runs until every trial it began has ended: an interrupted trial continues, one
whose process died runs again, and a finished study is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nanolab.config import NAME_PATTERN, NAME_RULE, Config, ConfigError
from nanolab.errors import SpecError, shown
from nanolab.launch import Launched, Launcher
from nanolab.plan import Plan
from nanolab.runfolder import RunStore
from nanolab.spec import normalize_overrides, parse_override
from nanolab.config_dicts import from_dict

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


def tuning_sweeps(plan: Plan, raw: Any, varied: list[str], variants: dict[str, dict]) -> dict:
    """variant id -> the Sweep that tunes it, every one checked before anything runs; `variants` maps a variant
    id to its changes. A study's base is the ablation's snapshot with the variant and `tune.overrides` applied
    (and `--set` still last)."""
    from nanolab.sweep.schema import build_sweep  # optuna is imported only by ablations that tune

    source = str(plan.path)
    block = from_dict(TuneBlock, raw, source, "tune.")
    for key in block.space:
        if key in varied:
            raise SpecError(f"{source}: tune.space.{key}: the ablation varies this key; tune other keys")
    tune_changes = dict(parse_override(text, Config, f"{source}: tune.overrides")
                        for text in normalize_overrides(block.overrides, source, "tune.overrides"))
    sweeps = {}
    for variant_id, variant in variants.items():
        name = study_name(plan.name, variant_id)
        if not NAME_PATTERN.match(name):
            raise SpecError(f"{source}: the tuning study of {variant_id} would be named {shown(name)}: {NAME_RULE}; "
                            "shorten the ablation's name or its grid values")
        study_plan = plan.with_changes(name, "sweep", {**variant, **tune_changes})
        sweeps[variant_id] = build_sweep(study_plan, block, str(RunStore().journal(name)), at="tune.",
                                         group=f"{plan.name}-tune", job_type=TUNE_JOB_TYPE)
    return sweeps


def study_name(ablation: str, variant_id: str) -> str:
    """The study that tunes a variant of an ablation (a sweep's name: its runs' group, its folder in sweeps/)."""
    return f"{ablation}-tune-{variant_id}"


def tune(sweeps: dict, launcher: Launcher) -> tuple[Launched, dict[str, dict]]:
    """Run each variant's study until every trial it began has ended; returns how the launch ended and variant id
    -> the best trial's parameters, for the variants whose study has a completed trial. A trial still marked
    running whose process died (kill -9 of the command) is failed and run again first: a value is never chosen
    from part of the study."""
    from nanolab.sweep import SweepStudy, optimize, params_text, write_results

    best = {}
    for variant_id, sweep in sweeps.items():
        study = SweepStudy.create(sweep)
        for line in study.recover():
            print(line, flush=True)
        # a grid smaller than `trials` is a finished study once every point has begun: left closed, not reopened
        # by every later call (each round of a sequential ablation calls this)
        new = 0 if study.exhausted() else max(0, sweep.trials - study.started())
        if new or study.waiting():
            print(f"tuning {variant_id}: {sweep.trials} trials of {', '.join(d.key for d in sweep.space)}, "
                  f"{sweep.trials - new} begun before; study {sweep.name}", flush=True)
            launched, _ = optimize(sweep, study, new, launcher, prefix=f"{variant_id} ")
            write_results(sweep, study)
            if launched is not Launched.DONE:
                return launched, best
        if study.running():
            print(f"tuning {variant_id}: {study.running()} trial(s) of study {sweep.name} still running elsewhere; "
                  "run the command again once they end", flush=True)
            return Launched.SUBMITTED, best
        if ranked := study.ranked():
            best[variant_id] = dict(ranked[0].params)
            print(f"tuned {variant_id}: {params_text(best[variant_id])} ({sweep.objectives[0].metric} "
                  f"{ranked[0].values[0]:.4f}, trial {ranked[0].number})", flush=True)
        else:
            print(f"nanolab: tuning {variant_id}: no trial completed ({sweep.folder / 'table.txt'}); "
                  "its runs are skipped", flush=True)
    return Launched.DONE, best
