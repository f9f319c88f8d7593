"""8 sweep workers over 2 "machines" on one PostgreSQL study, started at once (issue #11).

    python benchmarks/sweep_machines.py                       # 2 x (--workers 4 --trials 16) = 32 tiny trials
    NANOLAB_TEST_POSTGRES=postgresql://user@host:5432/db python benchmarks/sweep_machines.py --json machines.json

A machine is a `python -m nanolab sweep FILE --workers 4 --trials 16 --storage URL` process with its own
NANOLAB_RUNS folder; both are started in the same instant on a FRESH database, which this script creates beside
the one of `$NANOLAB_TEST_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/test) and drops at the end.
The trials are tiny (a 1-layer, 16-wide model, 40 steps) and the sampler is `tpe` with `seed: 0`: the case in
which the old code proposed the same parameters on every worker.

Then the study is read back with `optuna.load_study` and checked: both processes exit 0; every trial is COMPLETE
(or PRUNED: none here, the pruner is off); as many distinct parameter sets as trials; trial numbers exactly
0..31; every trial's run folder (its `run_dir` user attribute: the machines share a host, so the folder tells
them apart) lies under one of the two NANOLAB_RUNS and holds a finished run. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from nanolab.sweep.storage import safe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SHARED_SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

EXPERIMENT = """\
name: machines-tiny
seed: 1
data: {{block_size: 16}}
model: {{n_layer: 1, n_head: 2, n_embd: 16}}
train: {{batch_size: 4, max_iters: {steps}, eval_interval: {eval_interval}, eval_iters: 2, log_interval: 10,
        warmup_iters: 0, min_lr: 0.0, sample_tokens: 0}}
tracking: {{wandb: {{mode: disabled}}}}
"""

SWEEP = """\
name: {name}
experiment: tiny.yaml
objective: {{metric: val/loss, direction: minimize}}
space:
  train.lr: {{float: [1.0e-4, 3.0e-2], log: true}}
  train.warmup_iters: {{int: [0, 20], step: 5}}
sampler: {{name: tpe, seed: 0}}
pruner: none
trials: 16
"""


# ----------------------------------------------------------------------------- shared with sweep_workers.py


def data_cache(work: Path) -> dict[str, str]:
    """Environment for the child processes: nothing from the network. Tiny Shakespeare comes from
    $NANOLAB_CACHE or ~/.cache/nanolab if there, else a copy of $NANOLAB_TEST_SHAKESPEARE or ../shared/data."""
    env = {"WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    cached = Path(os.environ.get("NANOLAB_CACHE") or "~/.cache/nanolab").expanduser() / "tinyshakespeare/input.txt"
    if cached.is_file():
        return env
    source = Path(os.environ.get("NANOLAB_TEST_SHAKESPEARE") or SHARED_SHAKESPEARE)
    if not source.is_file():
        sys.exit(f"Tiny Shakespeare is neither in the cache ({cached}) nor at {source}: set NANOLAB_CACHE or "
                 "NANOLAB_TEST_SHAKESPEARE")
    (work / "cache" / "tinyshakespeare").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, work / "cache" / "tinyshakespeare" / "input.txt")
    return {**env, "NANOLAB_CACHE": str(work / "cache")}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ----------------------------------------------------------------------------- the fresh database


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(base_url: str) -> tuple[str, str]:
    """A new, empty database beside `base_url`'s: (its name, its SQLAlchemy URL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nanolab_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(base_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ----------------------------------------------------------------------------- the run and the checks


def start_machines(args, work: Path, sweep_file: Path, url: str, env: dict) -> list[dict]:
    """Both sweep processes, started back to back (the same instant, to the millisecond)."""
    machines = []
    for label in ("machine-a", "machine-b"):
        runs = work / label
        runs.mkdir()
        command = [sys.executable, "-m", "nanolab", "sweep", str(sweep_file), "--workers", str(args.workers),
                   "--trials", str(args.trials), "--storage", url]
        machines.append({"label": label, "runs": runs, "command": command,
                         "log": open(work / f"{label}.log", "w")})
    for m in machines:
        m["started"] = time.time()
        m["process"] = subprocess.Popen(m["command"], cwd=REPO, stdout=m["log"], stderr=subprocess.STDOUT,
                                        env={**os.environ, **env, "NANOLAB_RUNS": str(m["runs"])})
    return machines


def wait_machines(machines: list[dict], timeout: float) -> None:
    deadline = time.time() + timeout
    for m in machines:
        try:
            m["code"] = m["process"].wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            m["process"].terminate()  # SIGTERM: its workers save and stop; the checks then report what is missing
            m["code"] = m["process"].wait(timeout=60)
        m["seconds"] = round(time.time() - m["started"], 1)
        m["log"].close()


def check(machines: list[dict], url: str, name: str, expected: int) -> tuple[dict, list[str]]:
    """The figures read back from the study, and the checks that failed ([] when all passed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    failures = []
    codes = {m["label"]: m["code"] for m in machines}
    if any(codes.values()):
        failures.append(f"exit codes {codes}")

    states = Counter(t.state.name for t in trials)
    if set(states) - {"COMPLETE", "PRUNED"}:
        failures.append(f"trials not COMPLETE or PRUNED: {dict(states)}")

    param_sets = Counter(tuple(sorted(t.params.items())) for t in trials)
    duplicates = {str(dict(p)): n for p, n in param_sets.items() if n > 1}
    if duplicates:
        failures.append(f"{len(duplicates)} parameter sets proposed more than once: {duplicates}")

    numbers = sorted(t.number for t in trials)
    if numbers != list(range(expected)):
        missing = sorted(set(range(expected)) - set(numbers))
        extra = sorted(set(numbers) - set(range(expected)))
        failures.append(f"trial numbers: {len(numbers)} trials, missing {missing}, beyond {expected - 1}: {extra}")

    per_machine: Counter = Counter()
    workers: dict[str, set] = {m["label"]: set() for m in machines}
    unfinished = []
    for t in trials:
        run_dir = Path(t.user_attrs.get("run_dir", "?"))
        label = next((m["label"] for m in machines if run_dir.is_relative_to(m["runs"].resolve())), "unknown")
        per_machine[label] += 1
        if label in workers:
            workers[label].add(t.user_attrs.get("worker", "?"))
        meta = run_dir / "meta.json"
        status = json.loads(meta.read_text()).get("status") if meta.is_file() else "no meta.json"
        if status not in ("finished", "pruned"):
            unfinished.append(f"trial {t.number}: {status} in {run_dir}")
    if per_machine.get("unknown"):
        failures.append(f"{per_machine['unknown']} trials with a run_dir under neither machine's NANOLAB_RUNS")
    if unfinished:
        failures.append(f"{len(unfinished)} run folders not finished: {unfinished[:3]}")

    figures = {
        "exit_codes": codes,
        "seconds_per_machine": {m["label"]: m["seconds"] for m in machines},
        "trials": len(trials),
        "states": dict(states),
        "distinct_parameter_sets": len(param_sets),
        "trials_per_machine": dict(sorted(per_machine.items())),
        "worker_processes_per_machine": {k: len(v) for k, v in workers.items()},
        "numbers_0_to_n_minus_1": numbers == list(range(expected)),
        "run_folders_finished": len(trials) - len(unfinished),
    }
    return figures, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4, help="--workers of each machine")
    p.add_argument("--trials", type=int, default=16, help="--trials of each machine")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each trial")
    p.add_argument("--timeout", type=float, default=900, help="seconds before the machines are stopped")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, run folders)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()

    base_url = os.environ.get("NANOLAB_TEST_POSTGRES") or DEFAULT_URL
    expected = 2 * args.trials
    work = Path(tempfile.mkdtemp(prefix="nanolab-machines-"))
    env = data_cache(work)
    name = f"machines-{uuid.uuid4().hex[:6]}"
    (work / "tiny.yaml").write_text(EXPERIMENT.format(steps=args.steps, eval_interval=max(1, args.steps // 2)))
    sweep_file = work / "sweep.yaml"
    sweep_file.write_text(SWEEP.format(name=name))

    db, url = create_database(base_url)
    load_before = load_average()
    print(f"database {safe(url)} (fresh), study {name}, {os.cpu_count()} cores, load {load_before}")
    print(f"2 machines x `nanolab sweep --workers {args.workers} --trials {args.trials}`: "
          f"{2 * args.workers} workers, {expected} trials of {args.steps} steps, tpe seed 0")
    try:
        started = time.perf_counter()
        machines = start_machines(args, work, sweep_file, url, env)
        print(f"started within {abs(machines[1]['started'] - machines[0]['started']) * 1000:.0f} ms of each other",
              flush=True)
        wait_machines(machines, args.timeout)
        wall = round(time.perf_counter() - started, 1)
        figures, failures = check(machines, url, name, expected)
    finally:
        drop_database(base_url, db)
    figures.update(wall_s=wall, load_before=load_before, load_after=load_average(), cores=os.cpu_count(),
                   workers_per_machine=args.workers, steps_per_trial=args.steps, expected_trials=expected,
                   command=" ".join(machines[0]["command"][1:]).replace(url, safe(url)),
                   date=time.strftime("%Y-%m-%d %H:%M"))

    print(f"exit codes:            {figures['exit_codes']}  (seconds {figures['seconds_per_machine']})")
    print(f"trials by state:       {figures['states']}")
    print(f"distinct parameters:   {figures['distinct_parameter_sets']} sets for {figures['trials']} trials")
    print(f"trials per machine:    {figures['trials_per_machine']} "
          f"(worker processes {figures['worker_processes_per_machine']})")
    numbers = "all present, none beyond" if figures["numbers_0_to_n_minus_1"] else "NO"
    print(f"numbers 0..{expected - 1}:         {numbers}")
    print(f"run folders finished:  {figures['run_folders_finished']}/{figures['trials']}")
    print(f"wall time:             {wall:.1f} s (load {load_before} before, {figures['load_after']} after)")
    for m in machines:
        if m["code"]:
            tail = (work / f"{m['label']}.log").read_text().splitlines()[-15:]
            print(f"\n{m['label']} exited {m['code']}; the end of its output:\n" + "\n".join(tail))
    if args.json:
        Path(args.json).write_text(json.dumps({**figures, "failures": failures}, indent=2) + "\n")
    if args.keep or failures:
        print(f"\nlogs and run folders kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
