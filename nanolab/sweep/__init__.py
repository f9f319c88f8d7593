"""`nanolab sweep FILE`: an Optuna study in which every trial is a full nanolab run.

The sweeper proposes, the launcher runs (Hydra's split): this process asks the study for a trial whenever a
launcher's slot is free (a local worker, or a place in Slurm's queue) and hands it over as a task; the trial tells
the study how it ended, wherever it ran.

- schema.py   the sweep file, checked whole before trial 0
- study.py    Optuna: storage, sampler (seeded per trial), pruner, fingerprint, failing and retrying trials
- trial.py    one trial as a run (resumed from its checkpoint after Ctrl-C or a dead worker)
- results.py  trials.csv, best.yaml, table.txt
"""

from __future__ import annotations

import time

from nanolab.launch import Board, Launched, Launcher, Outcome, Task
from nanolab.sweep.results import format_table, write_results
from nanolab.sweep.schema import Sweep, load_sweep
from nanolab.sweep.study import SweepStudy
from nanolab.sweep.trial import run_trial
from nanolab.vocab import RunStatus

__all__ = ["Sweep", "SweepStudy", "format_table", "load_sweep", "optimize", "params_text", "write_results"]


def optimize(sweep: Sweep, study: SweepStudy, trials: int, launcher: Launcher,
             timeout: float | None = None, prefix: str = "") -> tuple[Launched, list[Outcome]]:
    """Run `trials` new trials (and any waiting to resume) with `launcher`; returns how the launch ended and the
    outcomes of the trials that ended in this call. `prefix` starts each trial's label: a tuned ablation's studies
    share its launcher, whose job records are by label."""
    sweep.plan.record(sweep.resolved(), sweep.facts())
    deadline = time.time() + timeout if timeout else None
    board = Board(trials, sweep.objectives[0].metric, sweep.objectives[0].direction)
    claimed, outcomes = 0, []

    def next_task() -> Task | None:
        nonlocal claimed
        for line in study.recover():
            board.say(line)
        if deadline and time.time() > deadline:
            return None
        if not study.waiting() and (claimed >= trials or study.exhausted()):  # a retry runs on an exhausted grid
            return None
        ticket = study.ask(owned=launcher.children)
        if ticket.origin == ticket.number:
            claimed += 1
        else:  # a resumed or retried trial is not one of the `trials` new ones
            board.total += 1
        params = params_text(ticket.params)
        resumes = f" (continues trial-{ticket.origin})" if ticket.origin != ticket.number else ""
        return Task(f"{prefix}trial {ticket.number} [{params}]{resumes}", sweep.run_folder(ticket.origin).path,
                    run_trial, (sweep, ticket.number, ticket.trial_id, ticket.origin))

    def on_end(task: Task, outcome: Outcome) -> None:
        outcomes.append(outcome)
        if outcome.status is RunStatus.FAILED and (line := study.fail_dead(task.args[1], outcome.text)):
            board.say(line)  # the worker died before it could tell the study
            write_results(sweep, study)

    return launcher.run(next_task, on_end, board), outcomes


def params_text(params: dict) -> str:
    """{'train.lr': 0.0026124, 'model.activation': 'gelu'} -> 'train.lr=0.002612, model.activation=gelu'"""
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())
