"""Sweeps on PostgreSQL: several processes starting the same study at once on a fresh database (issue #11).

Needs a server: `NANOLAB_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test` (any database the user may
connect to; each test creates, and drops, fresh databases beside it). Skipped when unset.

The race test runs as a script too, to compare with plain Optuna (the defect: one process dies with
`IntegrityError ... pg_type_typname_nsp_index`):

    NANOLAB_TEST_POSTGRES=postgresql://... python tests/test_sweep_postgres.py plain 20   # or: nanolab 20
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import POSTGRES_URL, SWEEP_EXPERIMENT, admin_url, fresh_database, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROCESSES, ROUNDS = 4, 5

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="NANOLAB_TEST_POSTGRES (a PostgreSQL URL) is not set")

# One long-lived child per simulated machine, so that the slow imports happen once, not once per round. Round r:
# wait for the file go_r (the fresh database's URL), then open the study at the same instant as the others and
# run one trial; write result_r_<index>: "ok" or the error's last line.
CHILD = r"""
import importlib.util, os, sys, time, warnings
import optuna
work, mode, rounds, index = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
warnings.simplefilter("ignore")  # the heartbeat's "supposed to be used with Study.optimize" on ask()
optuna.logging.set_verbosity(optuna.logging.WARNING)
# the file by its path: `import nanolab.sweep.storage` would run nanolab/sweep/__init__.py, and import torch
spec = importlib.util.spec_from_file_location("storage", os.path.join("nanolab", "sweep", "storage.py"))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
create_or_load_study = module.create_or_load_study
open(os.path.join(work, f"ready_{index}"), "w").close()
for r in range(rounds):
    go = os.path.join(work, f"go_{r}")
    while not os.path.exists(go):
        time.sleep(0.001)
    url = open(go).read()
    try:
        if mode == "plain":
            study = optuna.create_study(storage=optuna.storages.RDBStorage(url), study_name="s",
                                        directions=["minimize"], load_if_exists=True)
        else:
            study = create_or_load_study(url, "s", ["minimize"])
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))
        result = "ok"
    except Exception as exc:
        result = (type(exc).__name__ + ": " + (str(exc).strip().splitlines() or [""])[0])[:300]
    with open(os.path.join(work, f"result_{r}_{index}.tmp"), "w") as f:
        f.write(result)
    os.replace(os.path.join(work, f"result_{r}_{index}.tmp"), os.path.join(work, f"result_{r}_{index}"))
"""


def simultaneous_starts(url: str, work: Path, mode: str = "nanolab", processes: int = PROCESSES,
                        rounds: int = ROUNDS) -> list[str]:
    """`rounds` times, on a fresh database each: `processes` processes open study "s" at the same instant and run
    one trial each. Returns one line per failed round (a child's error, or trials missing); [] when all passed."""
    import optuna

    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(work), mode, str(rounds), str(i)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    failures = []
    try:
        ready = [work / f"ready_{i}" for i in range(processes)]
        wait_for(lambda: all(p.exists() for p in ready), timeout=60, what="every child imported and polling",
                 every=0.005, watch=procs)
        for r in range(rounds):
            with fresh_database(url) as db:
                (work / f"go_{r}.tmp").write_text(db)
                os.replace(work / f"go_{r}.tmp", work / f"go_{r}")  # the barrier: all children start now
                results = [work / f"result_{r}_{i}" for i in range(processes)]
                wait_for(lambda paths=results: all(p.exists() for p in paths), timeout=60,
                         what=f"round {r}'s results", every=0.005, watch=procs)
                errors = sorted({p.read_text() for p in results} - {"ok"})
                if not errors:
                    storage = optuna.storages.RDBStorage(db)
                    trials = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
                    storage.engine.dispose()
                    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
                    if complete != processes:
                        errors = [f"{complete} of {processes} trials complete"]
                failures += [f"round {r}: {e}" for e in errors]
        codes = [p.wait(timeout=30) for p in procs]
        assert codes == [0] * processes, f"exit codes {codes}: {[p.stderr.read() for p in procs]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
    return failures


def test_simultaneous_start_on_fresh_database(tmp_path):
    """4 processes x 5 fresh databases; one failed start in 5 is a failure (plain Optuna failed every round)."""
    failures = simultaneous_starts(POSTGRES_URL, tmp_path)
    assert failures == [], "\n".join(failures)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_open_errors_and_reopen():
    from nanolab.errors import NanolabError
    from nanolab.sweep import storage

    with pytest.raises(NanolabError, match=r"^storage postgresql://nobody:\*\*\*@127\.0\.0\.1:1/x: cannot open"):
        storage.open_storage("postgresql://nobody:secret@127.0.0.1:1/x")
    with fresh_database(POSTGRES_URL) as db:  # a second open finds the tables, and the study, the first one made
        study = storage.create_or_load_study(db, "s", ["maximize"])
        study.tell(study.ask(), 1.0)
        again = storage.create_or_load_study(db, "s", ["maximize"])
        assert (again.study_name, again.direction.name, len(again.trials)) == ("s", "MAXIMIZE", 1)


TINY_SWEEP = """\
experiment: tiny.yaml
space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}
sampler: {name: tpe, seed: 0}
pruner: none
trials: 2
"""


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_machines_start_the_same_sweep_at_once(tmp_path):
    """README's instruction, 5 times on a fresh database: two `nanolab sweep` commands with their own run folders
    and the same --storage, started together. Both finish, and no two trials share parameters."""
    import optuna

    (tmp_path / "tiny.yaml").write_text(SWEEP_EXPERIMENT)
    (tmp_path / "pgsweep.yaml").write_text(TINY_SWEEP)
    for r in range(ROUNDS):
        with fresh_database(POSTGRES_URL) as db:
            machines = [subprocess.Popen(
                [sys.executable, "-m", "nanolab", "sweep", str(tmp_path / "pgsweep.yaml"), "--storage", db],
                env={**os.environ, "NANOLAB_RUNS": str(tmp_path / f"round{r}-machine{i}")}, cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
            errors = [m.communicate(timeout=300)[1] for m in machines]
            assert [m.returncode for m in machines] == [0, 0], f"round {r}: {errors}"
            storage = optuna.storages.RDBStorage(db)
            trials = optuna.load_study(study_name="pgsweep", storage=storage).get_trials()
            storage.engine.dispose()
            assert sorted(t.number for t in trials) == [0, 1, 2, 3], f"round {r}"
            assert {t.state.name for t in trials} == {"COMPLETE"}, f"round {r}"
            assert len({t.params["train.lr"] for t in trials}) == 4, f"round {r}: duplicate parameters"


@pytest.mark.parametrize("metric", ["val/loss", "train/loss"])
def test_a_dropped_database_ends_the_sweep_in_one_line_and_run_folders_say_why(tmp_path, metric):
    """`DROP DATABASE ... WITH (FORCE)` while trial 0 trains. On val/loss the trial reports each evaluation (for the
    pruner): its next report finds the database gone and the run stops there. On train/loss it reports nothing:
    the run finishes and its result has nowhere to go. Either way: one line naming the storage (password masked),
    exit 2, and the truth in the run folder's meta.json."""
    import psycopg
    from sqlalchemy.engine import make_url

    from nanolab.runfolder import RunFolder
    from nanolab.sweep.storage import safe

    (tmp_path / "tiny.yaml").write_text(SWEEP_EXPERIMENT)
    (tmp_path / "dropped.yaml").write_text(f"{TINY_SWEEP}objective: {{metric: {metric}}}\n"
                                           "overrides: {train.max_iters: 2000, train.eval_interval: 500}\n")
    runs = tmp_path / "runs"
    with fresh_database(POSTGRES_URL) as db:
        url = make_url(db).set(password="secret").render_as_string(hide_password=False)  # trust: any password
        sweep = subprocess.Popen([sys.executable, "-m", "nanolab", "sweep", str(tmp_path / "dropped.yaml"),
                                  "--storage", url], env={**os.environ, "NANOLAB_RUNS": str(runs)}, cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for((runs / "dropped" / "trial-0" / "metrics.jsonl").exists, timeout=120, what="trial 0 to train",
                 every=0.005, watch=[sweep])
        with psycopg.connect(admin_url(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{make_url(db).database}" WITH (FORCE)')
        out, err = sweep.communicate(timeout=300)
    gone = f"storage {safe(url)}: the database is gone ("
    assert sweep.returncode == 2 and "Traceback" not in err and "secret" not in out + err, err
    assert err.splitlines()[-1].startswith(f"nanolab: error: {gone}"), err
    meta = RunFolder(runs / "dropped" / "trial-0").read_meta()
    if metric == "val/loss":
        assert meta["status"] == "failed" and gone in meta["reason"]
    else:
        assert meta["status"] == "finished" and meta["reason"] == ""
    assert meta["study"].startswith(f"not told how this run ended: {gone}")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trials_heartbeat_goes_on_quietly_when_the_database_is_gone(monkeypatch, capsys):
    """The trial itself says that its storage is gone (above); its heartbeat thread neither dies nor prints."""
    import threading

    import psycopg
    from sqlalchemy.engine import make_url

    from nanolab.sweep import storage
    from nanolab.sweep.study import SweepStudy

    monkeypatch.setattr(storage, "HEARTBEAT_INTERVAL", 1)
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    with fresh_database(POSTGRES_URL) as db:
        study = storage.create_or_load_study(db, "s", ["minimize"])
        trial = study.ask()
        dropped, beats_since, second = threading.Event(), [], threading.Event()
        record = study._storage.record_heartbeat

        def beat(trial_id: int) -> None:
            try:
                record(trial_id)
            finally:
                if dropped.is_set():
                    beats_since.append(trial_id)
                    if len(beats_since) == 2:  # the second beat: the thread outlived the first one's error
                        second.set()

        study._storage.record_heartbeat = beat
        with SweepStudy(None, study).heartbeat(trial._trial_id):
            with psycopg.connect(admin_url(POSTGRES_URL), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{make_url(db).database}" WITH (FORCE)')
            dropped.set()
            assert second.wait(timeout=60), "the heartbeat stopped"
    assert died == [] and capsys.readouterr().err == ""


if __name__ == "__main__":  # python tests/test_sweep_postgres.py plain|nanolab ROUNDS
    import tempfile

    if not POSTGRES_URL:
        sys.exit("set NANOLAB_TEST_POSTGRES")
    mode, rounds = sys.argv[1], int(sys.argv[2])
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        failed = simultaneous_starts(POSTGRES_URL, Path(tmp), mode, rounds=rounds)
    print("\n".join(failed))
    bad = len({f.split(":")[0] for f in failed})
    print(f"{mode}: {rounds - bad}/{rounds} rounds of {PROCESSES} simultaneous starts passed "
          f"({time.monotonic() - start:.1f} s)")
