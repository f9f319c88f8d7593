"""The plan commands (`nanolab sweep`, `ablate`, `status`) and a launched `nanolab run`: the launch options from
the flags, the front-end's engine call, what is printed and the exit status; and how a command stops on a signal
(SIGTERM as Ctrl-C: running tasks save, one line says how to continue)."""

from __future__ import annotations

import json
import math
import shlex
import signal
import sys

from nanolab.cli import conventions
from nanolab.errors import NanolabError
from nanolab.vocab import (BEST_VAL_LOSS, ENDED, EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, STATUS_EXIT,
                           RunStatus)


def launch_run(cfg, options, resume: str | None) -> int:
    """One run as one task of a launcher: over --nproc DDP processes here, or as a Slurm job."""
    from nanolab.distributed import World, check_batch
    from nanolab.launch import Board, Launched, Task, open_launcher
    from nanolab.plan import run_spec
    from nanolab.runfolder import RunFolder, RunStore, new_run_id

    check_batch(World(0, options.world_size), cfg.train.batch_size)
    folder = RunFolder(resume) if resume else RunStore().folder(cfg.name, new_run_id())
    tasks, ended = iter([Task(folder.run_id, folder.path, run_spec, (cfg, folder.path))]), []
    print(f"run {cfg.name}/{folder.run_id}: {options.describe()}", flush=True)
    launched = open_launcher(options, RunStore().group(cfg.name)).run(
        lambda: next(tasks, None), lambda task, outcome: ended.append(outcome), Board(1, BEST_VAL_LOSS))
    if launched is Launched.SUBMITTED:
        return EXIT_OK
    print(f"{ended[0].status}: {folder.path} ({ended[0].text or 'no evaluation'})")
    return STATUS_EXIT[ended[0].status]


def cmd_sweep(args) -> int:
    from nanolab.cli.commands import print_config, the_file
    from nanolab.launch import Launched, LaunchOptions, open_launcher
    from nanolab.sweep import SweepStudy, format_table, load_sweep, optimize, write_results
    from nanolab.sweep.storage import safe

    the_file(args, "sweep_file", "a SWEEP file")
    sweep = load_sweep(args.sweep_file, tuple(args.set), args.storage)
    if args.print_config:
        print_config(sweep.config({}), sweep.describe(args.trials))  # what every trial gets, less its params
        return EXIT_OK
    if args.status:
        print(sweep_status(sweep, args.json))
        return EXIT_OK
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise NanolabError(f"--timeout {args.timeout}: expected a number of seconds > 0")
    if args.trials is not None and args.trials < 1:
        raise NanolabError(f"--trials {args.trials}: expected a number of trials >= 1")
    options = LaunchOptions.from_args(args, sweep.slurm)
    launcher, study, trials = open_launcher(options, sweep.folder), SweepStudy.create(sweep), args.trials or sweep.trials
    print(f"sweep {sweep.name}: {trials} trials, {options.describe()}, storage {safe(sweep.storage)}", flush=True)
    launched, outcomes = optimize(sweep, study, trials, launcher, args.timeout)
    has_best = write_results(sweep, study)
    if launched is Launched.SUBMITTED:
        return submitted(args.sweep_file)
    print(format_table(sweep, study))
    print(f"results: {sweep.folder} (trials.csv, {'best.yaml, ' if has_best else ''}table.txt)")
    if launched is Launched.INTERRUPTED:
        return stopped(args, f"sweep {sweep.name}", "its interrupted trials continue from their checkpoints", outcomes)
    if not has_best:
        print(f"nanolab: sweep {sweep.name}: no best trial: no trial completed, so no best.yaml was written")
        return EXIT_FAILED
    return EXIT_FAILED if any(o.status is RunStatus.FAILED for o in outcomes) else EXIT_OK


def sweep_status(sweep, as_json: bool = False) -> str:
    """The table of the study as it stands, then the state of its jobs where they went to Slurm; runs nothing.
    As JSON: {"sweep", "trials": a row per trial as in trials.csv, "jobs": a row per Slurm job}."""
    from nanolab import launch
    from nanolab.sweep import SweepStudy, format_table
    from nanolab.sweep.storage import safe

    study = SweepStudy.load(sweep)
    jobs = launch.state(sweep.folder, None, lambda label: {"status": "a trial of the study"})
    if as_json:
        trials = [] if study is None else json.loads(study.dataframe().to_json(orient="records", date_format="iso"))
        return conventions.as_json({"sweep": sweep.name, "trials": trials, "jobs": jobs})
    table = (f"sweep {sweep.name}: no trial yet in {safe(sweep.storage)}" if study is None
             else format_table(sweep, study))
    return f"{table}\n\n{launch.state_text(jobs)}" if jobs else table


def cmd_ablate(args) -> int:
    from nanolab.cli.commands import print_config, the_file
    from nanolab.ablate import load_ablation, run_ablation
    from nanolab.launch import Launched, LaunchOptions, open_launcher
    from nanolab.runfolder import RunStore

    the_file(args, "ablation_file", "an ablation FILE")
    ablation = load_ablation(args.ablation_file, args.seeds, tuple(args.set))
    if args.print_config:
        tuning = {"tune": {variant: sweep.describe() for variant, sweep in ablation.tuning.items()}}
        print_config(ablation.plan.config(), {"ablation": ablation.name, "runs": {
            cell.run_id: {**cell.variant, "seed": cell.seed, "tracking.tags": ablation.tags(cell)}
            for cell in ablation.cells},
            **(tuning if ablation.tuning else {})})
        return EXIT_OK
    options = LaunchOptions.from_args(args, ablation.slurm)
    launched, outcomes = run_ablation(ablation, open_launcher(options, ablation.plan.folder))
    if launched is Launched.SUBMITTED:
        return submitted(args.ablation_file)
    if launched is Launched.INTERRUPTED:
        return stopped(args, f"ablation {ablation.name}", "its interrupted runs continue from their checkpoints",
                       list(outcomes.values()))
    from nanolab.analysis import compare_command

    print(compare_command([RunStore().group(ablation.name)], group=ablation.name))  # its plan.json names the baseline
    return EXIT_OK if all(o.status in ENDED for o in outcomes.values()) else EXIT_FAILED


def cmd_status(args) -> int:
    from nanolab.plan import plan_kind

    if plan_kind(args.plan_file) == "sweep":
        from nanolab.sweep import load_sweep

        print(sweep_status(load_sweep(args.plan_file, tuple(args.set)), args.json))
        return EXIT_OK
    from nanolab import launch, rounds
    from nanolab.ablate import describe, load_ablation

    ablation = load_ablation(args.plan_file, args.seeds, tuple(args.set))
    cells = rounds.round_cells(ablation, rounds.read_looks(ablation)) if ablation.design else ablation.cells
    rows = launch.state(ablation.plan.folder, [c.run_id for c in cells], lambda run_id: describe(ablation, run_id))
    if args.json:
        decisions = rounds.read_record(ablation.plan.folder) if ablation.design else None
        print(conventions.as_json({"ablation": ablation.name, "runs": rows, "decisions": decisions}))
        return EXIT_OK
    print(launch.state_text(rows))
    if ablation.design:
        print(sequential_status(ablation))
    return EXIT_OK


def sequential_status(ablation) -> str:
    """The looks taken so far and the round that runs next, with how many of its runs have ended (a round submitted
    to Slurm without --wait is looked at by the first `nanolab ablate` after all have)."""
    from nanolab import rounds
    from nanolab.plan import ended

    record, looks = rounds.read_record(ablation.plan.folder), rounds.read_looks(ablation)
    table = rounds.decisions_table(record, f"ablation {ablation.name}") if record else "no look taken yet"
    proposal = rounds.next_round(ablation, looks)
    if proposal:
        n, cells = proposal
        done = sum(ended(ablation.folder(c)) for c in cells)
        upcoming = (f"next round: {n} seeds of {', '.join(rounds.undecided(ablation, looks))} and the baseline "
                    f"({len(cells)} runs, {done} ended)")
    else:
        upcoming = "no round left: every variant decided or seeds.max reached"
    return "\n".join([*(rounds.look_line(look) for look in looks), table, upcoming])


def submitted(plan_file: str) -> int:
    print(f"follow them: nanolab status {plan_file}")
    return EXIT_OK


def stopped(args, what: str, continues: str, outcomes) -> int:
    """A plan stopped by Ctrl-C or SIGTERM: one line saying how to continue; exit 130 or 143."""
    signals = [name for name in ("SIGTERM", "SIGINT") if name in RECEIVED or any(name in o.text for o in outcomes)]
    print(f"nanolab: {what} stopped by {signals[0] if signals else 'SIGINT'}; {continues} with: "
          f"nanolab {' '.join(map(shlex.quote, args.argv))}", file=sys.stderr, flush=True)
    return EXIT_SIGTERM if signals[:1] == ["SIGTERM"] else EXIT_SIGINT


RECEIVED: set[str] = set()  # the stop signals this command received between runs (a run handles its own)


def stop(signum, frame) -> None:
    """SIGTERM (a scheduler, `kill`) stops a command as Ctrl-C does: running tasks save, one line says how to go on."""
    RECEIVED.add(signal.Signals(signum).name)
    raise KeyboardInterrupt
