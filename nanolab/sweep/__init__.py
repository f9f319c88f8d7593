"""`nanolab sweep FILE`: an Optuna study in which every trial is a full nanolab run.

The sweeper proposes, the launcher runs (Hydra's split): this process asks the study for a trial whenever a
worker is free and hands it to the launcher; the trial tells the study how it ended.

- schema.py   the sweep file, checked whole before trial 0
- study.py    Optuna: storage, sampler (seeded per trial), pruner, fingerprint, failing and retrying trials
- trial.py    one trial as a run (resumed from its checkpoint after Ctrl-C or a dead worker)
- results.py  trials.csv, best.yaml, table.txt
"""

from __future__ import annotations

import time

from nanolab.errors import NanolabError
from nanolab.launcher import Board, Launcher, LocalLauncher, Outcome, Task
from nanolab.slurm import Job, SlurmLauncher, SlurmOptions
from nanolab import slurm
from nanolab.sweep.results import format_table, write_results
from nanolab.sweep.schema import Sweep, load_sweep
from nanolab.sweep.storage import safe
from nanolab.sweep.study import SweepStudy
from nanolab.sweep.trial import run_trial
from nanolab.vocab import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, RunStatus

__all__ = ["Sweep", "SweepStudy", "load_sweep", "optimize", "params_text", "status", "sweep_command",
           "write_results"]


def optimize(sweep: Sweep, study: SweepStudy, trials: int, launcher: Launcher,
             timeout: float | None = None) -> tuple[bool, list[Outcome]]:
    """Run `trials` new trials (and any waiting to resume) with `launcher`; returns (not interrupted, outcomes)."""
    deadline = time.time() + timeout if timeout else None
    board = Board(trials, sweep.objectives[0].metric, sweep.objectives[0].direction)
    claimed, outcomes = 0, []

    def next_task() -> Task | None:
        nonlocal claimed
        for line in study.recover():
            board.say(line)
        if (deadline and time.time() > deadline) or study.exhausted():
            return None
        if not study.waiting() and claimed >= trials:
            return None
        ticket = study.ask()
        if ticket.origin == ticket.number:
            claimed += 1
        else:  # a resumed or retried trial is not one of the `trials` new ones
            board.total += 1
        params = params_text(ticket.params)
        resumes = f" (continues trial-{ticket.origin})" if ticket.origin != ticket.number else ""
        return Task(f"trial {ticket.number} [{params}]{resumes}", sweep.run_folder(ticket.origin).path, run_trial,
                    (sweep, ticket.number, ticket.trial_id, ticket.origin))

    def on_end(task: Task, outcome: Outcome) -> None:
        outcomes.append(outcome)
        if outcome.status is RunStatus.FAILED and (line := study.fail_dead(task.args[1], outcome.text)):
            board.say(line)  # the worker died before it could tell the study
            write_results(sweep, study)

    completed = launcher.run(next_task, on_end, board)
    return completed, outcomes


def params_text(params: dict) -> str:
    """{'train.lr': 0.0026124, 'model.activation': 'gelu'} -> 'train.lr=0.002612, model.activation=gelu'"""
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def work(sweep: Sweep, trials: int, *, progress: bool) -> Outcome:
    """A Slurm job of `nanolab sweep --launcher slurm`: any trials waiting to resume, then `trials` new ones."""
    completed, outcomes = optimize(sweep, SweepStudy.create(sweep), trials, LocalLauncher(1))
    failed = sum(o.status is RunStatus.FAILED for o in outcomes)
    stops = [o.text for o in outcomes if o.status is RunStatus.INTERRUPTED]
    text = f"{len(outcomes)} trials, {failed} failed" + "".join(f"; interrupted: {stop}" for stop in stops)
    status = RunStatus.INTERRUPTED if not completed else RunStatus.FAILED if failed else RunStatus.FINISHED
    return Outcome(status, text)


def submit(sweep: Sweep, options: SlurmOptions, workers: int, trials: int | None, wait: bool) -> list[Outcome]:
    """Submit worker jobs for the trials not yet begun (the file's `trials` in all, or `trials` more) and any
    waiting to resume; nothing while workers of this sweep are still in Slurm's queue."""
    launcher, study = SlurmLauncher(options, sweep.folder), SweepStudy.create(sweep)
    queued = launcher.queued()
    new = trials if trials is not None else max(0, sweep.trials - study.started())
    count = 0 if queued else min(workers, max(new, int(study.waiting())))
    print(f"sweep {sweep.name}: {study.started()} trials begun, {len(queued)} worker job(s) in Slurm's queue; "
          f"submitting {count} worker(s) for {new if count else 0} new trial(s), storage {safe(sweep.storage)}",
          flush=True)
    jobs = [Job(Task(f"worker-{i}", None, work, (sweep, new // count + (i < new % count)))) for i in range(count)]
    launcher.submit(jobs)
    outcomes: list[Outcome] = []
    if wait or options.cluster == "local":
        followed = jobs or [Job(Task(label, None, work)) for label in queued]
        launcher.follow(followed, Board(len(followed), "trials"), lambda task, outcome: outcomes.append(outcome))
    return outcomes


def status(sweep: Sweep) -> str:
    """The table of the study as it stands, then its Slurm worker jobs if it has any; nothing runs."""
    study = SweepStudy.load(sweep)
    table = f"sweep {sweep.name}: no trial yet in {safe(sweep.storage)}" if study is None else format_table(sweep, study)
    launcher = SlurmLauncher(sweep.slurm, sweep.folder)
    if not (workers := list(launcher.submitted())):
        return table
    return f"{table}\n\n{launcher.jobs_table(workers, lambda label: 'a worker of the study')}"


def sweep_command(args) -> int:
    sweep = load_sweep(args.sweep_file, tuple(args.set), args.storage)
    if args.status:
        print(status(sweep))
        return EXIT_OK
    if args.trials is not None and args.trials < 1:
        raise NanolabError(f"--trials {args.trials}: expected a number of trials >= 1")
    if args.launcher != "local":
        if args.workers < 1:
            raise NanolabError(f"--workers {args.workers}: expected a number of worker jobs >= 1")
        outcomes = submit(sweep, slurm.options(sweep.slurm, args), args.workers, args.trials, args.wait)
        if not outcomes:
            print(f"follow them: nanolab status {args.sweep_file}")
            return EXIT_OK
        study, completed = SweepStudy.create(sweep), RunStatus.INTERRUPTED not in {o.status for o in outcomes}
    else:
        trials = args.trials or sweep.trials
        launcher = LocalLauncher(args.workers)  # checks --workers before the study exists
        study = SweepStudy.create(sweep)
        print(f"sweep {sweep.name}: {trials} trials on {args.workers} worker(s), storage {safe(sweep.storage)}",
              flush=True)
        completed, outcomes = optimize(sweep, study, trials, launcher, args.timeout)
    has_best = write_results(sweep, study)
    print(format_table(sweep, study))
    print(f"results: {sweep.folder} (trials.csv, {'best.yaml, ' if has_best else ''}table.txt)")
    if not completed:
        return EXIT_SIGINT
    if not has_best:
        print(f"nanolab: sweep {sweep.name}: no best trial: no trial completed, so no best.yaml was written")
        return EXIT_FAILED
    return EXIT_FAILED if any(o.status is RunStatus.FAILED for o in outcomes) else EXIT_OK
