"""Sweeps: Optuna studies of tiny runs end to end, continuation, pruning, failures, workers, storages, bad files."""

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import cli, sweep_file, trial_rows

from nanolab import load_spec, run
from nanolab.cli import main
from nanolab.runfolder import RunStore, runs_root
from nanolab.sweep import SweepStudy, load_sweep
from nanolab.sweep.storage import open_storage
from nanolab.vocab import objective_value

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

def meta(name: str, number: int) -> dict:
    return json.loads((runs_root() / name / f"trial-{number}" / "meta.json").read_text())


@pytest.fixture(scope="module")
def lr_study(tmp_path_factory):
    """A three-trial study over train.lr, run once for the tests that read its results."""
    path = sweep_file(tmp_path_factory.mktemp("lr"), "lr-e2e", """\
space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}, train.warmup_iters: {int: [0, 10], step: 5}}
sampler: {name: random, seed: 0}
pruner: none
trials: 3
""")
    assert main(["sweep", str(path)]) == 0
    return path


def test_study_writes_results_and_trial_runs(lr_study):
    rows = trial_rows("lr-e2e")
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    cfg = load_spec(runs_root() / "lr-e2e" / "trial-1" / "config.yaml")
    assert cfg.train.lr == pytest.approx(float(rows[1]["params_train.lr"]))  # the parameters are in config.yaml
    assert (cfg.name, cfg.tracking.group, cfg.tracking.job_type) == ("lr-e2e", "lr-e2e", "sweep")
    assert meta("lr-e2e", 1)["trial"] == 1 and meta("lr-e2e", 1)["status"] == "finished"
    assert "top 3 trials" in (runs_root() / "sweeps" / "lr-e2e" / "table.txt").read_text()


def test_best_yaml_is_a_runnable_spec(lr_study):
    best = min(trial_rows("lr-e2e"), key=lambda r: float(r["value_val/loss"]))
    cfg = load_spec(runs_root() / "sweeps" / "lr-e2e" / "best.yaml")
    assert cfg.train.lr == pytest.approx(float(best["params_train.lr"]))
    assert cfg.train.warmup_iters == int(best["params_train.warmup_iters"])
    assert run(cfg, show_progress=False).status == "finished"


def test_status_prints_the_table_and_runs_nothing(lr_study, capsys):
    before = sorted(p.name for p in (runs_root() / "lr-e2e").iterdir())
    capsys.readouterr()
    assert main(["sweep", str(lr_study), "--status"]) == 0
    out = capsys.readouterr().out
    assert "lr-e2e: 3 trials (3 complete)" in out and "top 3 trials" in out
    assert sorted(p.name for p in (runs_root() / "lr-e2e").iterdir()) == before
    assert len(trial_rows("lr-e2e")) == 3


def test_second_call_continues_the_study(tmp_path):
    path = sweep_file(tmp_path, "lr-more", "space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}\ntrials: 2\n")
    assert main(["sweep", str(path)]) == 0
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    assert [r["number"] for r in trial_rows("lr-more")] == ["0", "1", "2"]
    assert (runs_root() / "lr-more" / "trial-2" / "meta.json").is_file()


def test_median_pruner_prunes_a_bad_trial(tmp_path):
    # random sampler, seed 6: lr 0.01, 0.01, then 1e-6, which learns nothing and is pruned at its first evaluation
    path = sweep_file(tmp_path, "prune", """\
space: {train.lr: {choice: [0.01, 1.0e-6]}}
sampler: {name: random, seed: 6}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
trials: 3
""")
    assert main(["sweep", str(path)]) == 0
    pruned = [r for r in trial_rows("prune") if r["state"] == "PRUNED"]
    assert pruned and all(float(r["params_train.lr"]) == 1e-6 for r in pruned)
    info = meta("prune", int(pruned[0]["number"]))
    assert info["status"] == "pruned" and info["steps"] == 5


def test_diverged_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path, capsys):
    path = sweep_file(tmp_path, "diverge", """\
overrides: [train.grad_clip=0]
space: {train.lr: {choice: [1.0e+6, 3.0e-3]}}
sampler: grid
trials: 2
""")
    assert main(["sweep", str(path)]) == 0  # a diverged trial is a result, not a failed job
    rows = {float(r["params_train.lr"]): r for r in trial_rows("diverge")}
    assert rows[1e6]["state"] == "FAIL" and rows[1e6]["user_attrs_fail_reason"].startswith("diverged: step ")
    assert rows[3e-3]["state"] == "COMPLETE"
    assert load_spec(runs_root() / "sweeps" / "diverge" / "best.yaml").train.lr == 3e-3
    assert "failed: diverged" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_seeded_grid_tries_every_point_once(tmp_path, seed):
    """The seed shuffles the grid, and a trial's grid id names a point of it: with a seed per trial, trials 0 and
    1 of seeds 0 and 1 drew the same point of two (found by the GPU check's sweep)."""
    path = sweep_file(tmp_path, f"grid{seed}", "overrides: {train.max_iters: 5}\n"
                      f"space: {{model.activation: {{choice: [relu, gelu]}}}}\nsampler: {{name: grid, seed: {seed}}}\n"
                      "trials: 2\n")
    assert main(["sweep", str(path)]) == 0
    assert sorted(r["params_model.activation"] for r in trial_rows(f"grid{seed}")) == ["gelu", "relu"]


def test_infinite_objective_fails_the_trial_and_no_best_trial_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("nanolab.sweep.trial.objective_value", lambda *args: float("inf"))  # Optuna: COMPLETE
    path = sweep_file(tmp_path, "inf", "space: {train.lr: {choice: [3.0e-3]}}\ntrials: 1\n")
    assert main(["sweep", str(path)]) == 1
    (row,) = trial_rows("inf")
    assert row["state"] == "FAIL" and row["user_attrs_fail_reason"] == "objective val/loss is inf"
    out = capsys.readouterr().out
    assert "no best trial" in out and "best.yaml" not in out.splitlines()[-2]
    assert not (runs_root() / "sweeps" / "inf" / "best.yaml").exists()


def test_objective_rule():
    rows = [{"step": 5, "val/loss": 3.0, "perf/step_ms": 9.0, "train/loss": 3.5}, {"step": 10, "perf/step_ms": 1.0},
            {"step": 15, "val/loss": 3.2, "val/bpc": 4.6, "perf/step_ms": 2.0, "train/loss": 3.1}]
    summary = {"best/val_loss": 3.0, "tokens_seen": 960}
    assert objective_value("val/loss", summary, rows) == 3.0  # the best evaluation, from the summary
    assert objective_value("tokens_seen", summary, rows) == 960
    assert objective_value("perf/step_ms", summary, rows) == 2.0  # the median of the logged rows
    assert objective_value("train/loss", summary, rows) == 3.1  # the last logged value
    assert objective_value("val/bpc", summary, rows) == 4.6
    assert objective_value("perf/mfu", summary, rows) is None


def test_pareto_front_of_two_objectives(tmp_path, capsys):
    path = sweep_file(tmp_path, "pareto", """\
objective: [{metric: val/loss, direction: minimize}, {metric: perf/step_ms, direction: minimize}]
space: {model.n_embd: {choice: [8, 16]}}
sampler: {name: tpe, seed: 0}
trials: 2
""")
    assert main(["sweep", str(path)]) == 0
    assert "Pareto front (minimize val/loss, minimize perf/step_ms)" in capsys.readouterr().out
    assert {r["state"] for r in trial_rows("pareto")} == {"COMPLETE"}  # no pruning with several objectives
    assert load_spec(runs_root() / "sweeps" / "pareto" / "best.yaml").model.n_embd in (8, 16)


def test_trial_of_a_dead_worker_is_failed_with_its_run_folder_and_retried_once(tmp_path):
    path = sweep_file(tmp_path, "dead", "space: {train.lr: {float: [1.0e-3, 1.0e-2]}}\ntrials: 1\n")
    sweep = load_sweep(path)
    study = SweepStudy.create(sweep)
    ticket = study.ask()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no process holds any more
    study.set_attrs(ticket.number, worker=f"{socket.gethostname()}:{gone.pid}")
    RunStore().new("dead", "trial-0").write_meta({"run_id": "trial-0", "status": "running"})
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    first, retry, new = trial_rows("dead")  # a dead worker's trial is replaced, not counted: 1 new trial too
    reason = f"worker process {gone.pid} died"
    assert first["state"] == "FAIL" and first["user_attrs_fail_reason"] == reason
    assert retry["state"] == "COMPLETE" and float(retry["params_train.lr"]) == ticket.params["train.lr"]
    assert int(float(retry["user_attrs_resumes"])) == 0 and new["state"] == "COMPLETE"
    aside = RunStore().folder("dead", "trial-0.attempt1").read_meta()  # the dead trial's folder says so
    assert (aside["status"], aside["reason"]) == ("failed", reason)
    assert RunStore().folder("dead", "trial-0").read_meta()["status"] == "finished"


def run_workers(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("sweep", path, "--workers", "2", *extra, timeout=240)


def check_workers_result(rows: list[dict], name: str, n: int) -> None:
    assert sorted(int(r["number"]) for r in rows) == list(range(n))  # none lost, none duplicated
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert sorted(p.name for p in (runs_root() / name).iterdir()) == [f"trial-{i}" for i in range(n)]


def test_two_workers_share_the_default_journal_storage(tmp_path):
    path = sweep_file(tmp_path, "workers", "space: {train.lr: {float: [1.0e-3, 1.0e-2]}}\nsampler: {seed: 0}\n")
    done = run_workers(path, "--trials", "5")
    assert done.returncode == 0, done.stderr
    check_workers_result(trial_rows("workers"), "workers", 5)


def test_two_workers_share_a_postgresql_study(tmp_path):
    url = os.environ.get("NANOLAB_TEST_POSTGRES")
    if not url:
        pytest.skip("set NANOLAB_TEST_POSTGRES=postgresql://... to run the PostgreSQL sweep test")
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = sweep_file(tmp_path, name, "space: {train.lr: {float: [1.0e-3, 1.0e-2]}}\nsampler: {seed: 0}\n")
    try:
        done = run_workers(path, "--trials", "4", "--storage", url)
        assert done.returncode == 0, done.stderr
        check_workers_result(trial_rows(name), name, 4)
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))


BAD_SWEEPS = {
    "unknown space key": ("space: {model.n_layr: {int: [1, 2]}}",
                          "bad.yaml: space: model.n_layr: unknown key", "did you mean 'n_layer'?"),
    "unknown component": ("space: {model.activation: {choice: [gelu, gelx]}}",
                          "bad.yaml: space: model.activation = 'gelx': unknown activation", "did you mean 'gelu'?"),
    "bad distribution": ("space: {train.lr: {float: [0.1]}}",
                         "bad.yaml: space.train.lr.float = [0.1]: expected [low, high]", "low < high"),
    "unknown distribution": ("space: {train.lr: {flaot: [0.1, 1]}}",
                             "bad.yaml: space.train.lr = {'flaot': [0.1, 1]}: expected one of", "{choice: [a, b"),
    "unknown option": ("space: {train.lr: {float: [0.1, 1], logg: true}}",
                       "bad.yaml: space.train.lr.logg: unknown option", "did you mean 'log'?"),
    "unknown sampler": ("space: {train.lr: {choice: [0.1]}}\nsampler: {name: tpee, seed: 0}",
                        "bad.yaml: sampler.name = 'tpee': unknown sampler; accepted: tpe,", "did you mean 'tpe'?"),
    "unknown pruner option": ("space: {train.lr: {choice: [0.1]}}\npruner: {name: median, warmup: 5}",
                              "bad.yaml: pruner.warmup: unknown option of the median pruner", "n_warmup_steps"),
    "unknown direction": ("space: {train.lr: {choice: [0.1]}}\nobjective: {metric: val/loss, direction: minimise}",
                          "bad.yaml: objective.direction = 'minimise': unknown direction", "did you mean 'minimize'?"),
    "unknown metric": ("space: {train.lr: {choice: [0.1]}}\nobjective: [{metric: val/los}]",
                       "bad.yaml: objective[0].metric = 'val/los': unknown metric", "did you mean 'val/loss'?"),
    "unknown top-level key": ("spcae: {train.lr: {choice: [0.1]}}",
                              "bad.yaml: spcae: unknown key", "did you mean 'space'?"),
    "value the experiment rejects": ("overrides: [train.min_lr=1.0e-4]\nspace: {train.lr: {float: [1.0e-9, 0.1]}}",
                                     "bad.yaml: space.train.lr = 1e-09: train.min_lr", "must be in [0, lr=1e-09]"),
}


@pytest.mark.parametrize("kind", BAD_SWEEPS)
def test_bad_sweep_file_is_one_clear_line(tmp_path, capsys, kind):
    body, *expected = BAD_SWEEPS[kind]
    path = sweep_file(tmp_path, "bad", body + "\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nanolab: error: ")
    assert all(text in err for text in expected), err
    assert not (runs_root() / "bad").exists()


def test_bad_sweep_file_from_the_command_line_has_no_traceback(tmp_path):
    path = sweep_file(tmp_path, "bad", "space: {train.lr: {choice: [0.1]}}\nsampler: tpee\n")
    done = subprocess.run([sys.executable, "-m", "nanolab", "sweep", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"nanolab: error: {path}: sampler = 'tpee': unknown sampler; accepted: tpe, random, grid, cmaes, qmc "
        "(did you mean 'tpe'?)"]


def test_trials_keep_the_experiments_tags_and_print_config_shows_them(tmp_path, capsys):
    path = sweep_file(tmp_path, "tagged", "overrides: {tracking.tags: [sweep, lr], train.max_iters: 4}\n"
                      "space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}\ntrials: 1\n")
    assert main(["sweep", str(path), "--print-config"]) == 0
    assert "  tags:\n  - sweep\n  - lr\n  - tagged\n" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert meta("tagged", 0)["tags"] == ["sweep", "lr", "tagged"]
