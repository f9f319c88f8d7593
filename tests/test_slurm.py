"""The Slurm launcher (issue #15) on a real single-node Slurm that `slurm_cluster.py` starts (slurmctld + slurmd
+ munge), and on submitit's local executor, which runs the same job objects as subprocesses with no daemons."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import POSTGRES_URL, cli, fresh_database, start_cli, tiny_yaml, wait_for

from nanolab.ablate import ablate
from nanolab.analysis import load_runs

ABLATION = """\
name: act
experiment: tiny.yaml
overrides: {{train.max_iters: {steps}, train.eval_interval: {evals}}}
grid: {{model.activation: [relu, swiglu]}}
seeds: [1, 2]
"""
SWEEP = """\
experiment: tiny.yaml
overrides: {train.max_iters: 10, train.eval_interval: 10}
space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}
sampler: {name: random, seed: 0}
trials: 4
"""
REPO = Path(__file__).resolve().parents[1]
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "data.block_size=16", "train.batch_size=4",
        "train.max_iters=1500", "train.eval_interval=500", "train.eval_iters=2", "train.log_interval=5",
        "train.sample_tokens=0", "tracking.wandb.mode=disabled"]
ACTIVATION_RUNS = [f"activation={a}-s{s}" for a in ("gelu", "relu", "relu2", "swiglu") for s in (1, 2)]
RUN_IDS = ["activation=relu-s1", "activation=relu-s2", "activation=swiglu-s1", "activation=swiglu-s2"]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A folder with the tiny experiment, its own runs root, and cwd there (submitit's folders are relative)."""
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    return tmp_path


def job_ids(stdout: str) -> dict[str, str]:
    """label -> job id from the lines `<label>: job <id>, log <path>` that submitting prints."""
    return dict(re.findall(r"^(\S+): job (\d+)", stdout, flags=re.M))


def trial_jobs(stdout: str) -> dict[str, str]:
    """trial number -> job id from the lines `trial <n> [<params>]: job <id>, log <path>`."""
    return dict(re.findall(r"^trial (\d+) \[[^\]]*\]: job (\d+)", stdout, flags=re.M))


def best_losses(runs: Path, group: str) -> dict[str, float]:
    frame = load_runs(runs, group=group)
    return dict(zip(frame["run_id"], frame["best/val_loss"]))


def train_steps(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "train/loss" in row]


def squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True).stdout
    return out.strip()


# ----------------------------------------------------------------------------- on a real Slurm


def test_the_activation_ablation_runs_as_slurm_jobs_and_a_cancelled_cell_continues(slurm, work, tmp_path,
                                                                                   monkeypatch):
    plan = str(REPO / "experiments/ablations/activation.yaml")
    slurm_flags = ["--launcher", "slurm", "--partition", slurm.partition, "--cpus", "1"]
    first = cli("ablate", plan, *slurm_flags, "--seeds", "1", "2", "--set", *TINY)
    assert first.returncode == 0, first.stderr
    ids = job_ids(first.stdout)
    assert sorted(ids) == ACTIVATION_RUNS and "8 to run" in first.stdout  # it returned once they were queued
    assert "follow them: nanolab status" in first.stdout

    cancelled = work / "runs/activation/activation=relu-s1"
    wait_for(lambda: (cancelled / "metrics.jsonl").is_file() and train_steps(cancelled)[-1:] >= [20],
             what="the first cell's step 20", every=0.5)
    subprocess.run(["scancel", ids["activation=relu-s1"]], check=True)
    wait_for(lambda: squeue(ids["activation=relu-s1"]) in ("", "CANCELLED"), what="the cancelled job to leave",
             every=0.5)
    meta = json.loads((cancelled / "meta.json").read_text())
    assert (meta["status"], meta["reason"]) == ("interrupted", "SIGTERM")  # it saved on scancel's SIGTERM

    status = cli("status", plan, "--seeds", "1", "2", "--set", *TINY)
    # the tiny run may have passed its first evaluation (step 500) before scancel's SIGTERM arrived
    assert re.search(rf"^activation=relu-s1 +{ids['activation=relu-s1']} +- +interrupted(, best/val_loss [\d.]+)?$",
                     status.stdout, re.M)

    second = cli("ablate", plan, *slurm_flags, "--wait", "--seeds", "1", "2", "--set", *TINY)
    assert second.returncode == 0, second.stderr
    assert list(job_ids(second.stdout)) == ["activation=relu-s1"]  # only the cancelled cell, nothing twice
    assert sorted(p.name for p in (work / "runs/activation").iterdir()) == [".slurm", *ACTIVATION_RUNS, "plan.json"]
    assert train_steps(cancelled) == list(range(5, 1501, 5))  # continued from its checkpoint, no step twice

    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "local"))
    ablate(plan, seeds=[1, 2], workers=2, overrides=tuple(TINY))  # 1 thread per run, as in the 1-CPU jobs
    assert best_losses(tmp_path / "local", "activation") == best_losses(work / "runs", "activation")


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_a_slurm_sweep_runs_a_job_per_trial_two_at_a_time_and_accounts_for_every_trial(slurm, work, storage):
    if storage == "postgresql" and not POSTGRES_URL:
        pytest.skip("NANOLAB_TEST_POSTGRES (a PostgreSQL URL) is not set")
    (work / "sw.yaml").write_text(SWEEP)
    with fresh_database(POSTGRES_URL) if storage == "postgresql" else contextlib.nullcontext() as url:
        where = ["--storage", url] if url else []  # the journal file in the sweep's folder, on a shared file system
        submit = ["sweep", "sw.yaml", "--launcher", "slurm", "--workers", "2", *where, "--partition", slurm.partition]
        result = cli(*submit, "--cpus", "1", "--wait")
        assert result.returncode == 0, result.stderr
        jobs = trial_jobs(result.stdout)
        assert sorted(jobs) == ["0", "1", "2", "3"] and len(set(jobs.values())) == 4  # a job per trial
        lines = result.stdout.splitlines()
        third = next(i for i, line in enumerate(lines) if line.startswith("trial 2 ["))
        assert sum(": finished," in line for line in lines[:third]) >= 1  # proposed once a slot was free
        assert "sweep sw: 4 trials (4 complete)" in result.stdout
        if not url:
            status = cli("status", "sw.yaml")
            assert "4 trials (4 complete)" in status.stdout and all(job in status.stdout for job in jobs.values())
    trials = sorted(p.name for p in (work / "runs/sw").iterdir() if not p.name.startswith("."))
    assert trials == ["trial-0", "trial-1", "trial-2", "trial-3"]


def test_a_ddp_run_on_slurm_equals_the_same_run_in_one_process(slurm, work, tmp_path, monkeypatch):
    sets = ["--set", "train.max_iters=10", "train.eval_interval=10", "seed=3"]
    result = cli("run", "tiny.yaml", *sets, "--launcher", "slurm", "--nproc", "2", "--cpus", "1", "--partition",
                 slurm.partition, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 node(s) x 2 task(s)" in result.stdout
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "one"))
    assert cli("run", "tiny.yaml", *sets).returncode == 0
    [ddp], [one] = (load_runs(root, group=None)["best/val_loss"].tolist() for root in (work / "runs", tmp_path / "one"))
    assert ddp == pytest.approx(one, abs=1e-3)  # the world-size-invariant batch, as under torchrun


def test_sigusr2_before_the_time_limit_saves_requeues_and_continues(slurm, work):
    (work / "act.yaml").write_text(ABLATION.format(steps=1500, evals=500).replace("seeds: [1, 2]", "seeds: [1]")
                                   .replace("[relu, swiglu]", "[relu]"))
    first = cli("ablate", "act.yaml", "--launcher", "slurm", "--partition", slurm.partition, "--cpus", "1")
    [job] = job_ids(first.stdout).values()
    folder = work / "runs/act/activation=relu-s1"
    wait_for(lambda: (folder / "ckpt/last.pt").is_file() or (folder / "metrics.jsonl").is_file() and
             len((folder / "metrics.jsonl").read_text().splitlines()) >= 3, what="the run's progress", every=0.5)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what Slurm sends 90 s before the limit
    wait_for(lambda: json.loads((folder / "meta.json").read_text()).get("reason") == "SIGUSR2" or
             json.loads((folder / "meta.json").read_text())["status"] == "finished", what="the save", every=0.5)
    wait_for(lambda: json.loads((folder / "meta.json").read_text())["status"] == "finished", timeout=180,
             what="the requeued job to finish the run", every=0.5)
    assert train_steps(folder) == list(range(5, 1501, 5))
    assert (work / "runs/act/.slurm/jobs.json").is_file() and json.loads(
        (work / "runs/act/.slurm/jobs.json").read_text()) == {"activation=relu-s1": job}  # the same job, requeued


# ----------------------------------------------------------------------------- submitit's local executor


def test_submitit_local_runs_the_same_jobs_with_the_local_backends_losses(work, tmp_path, monkeypatch):
    (work / "act.yaml").write_text(ABLATION.format(steps=20, evals=10))
    result = cli("ablate", "act.yaml", "--launcher", "submitit-local")
    assert result.returncode == 0, result.stderr
    assert sorted(job_ids(result.stdout)) == RUN_IDS and "done 4/4, running 0, failed 0" in result.stdout
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "local"))
    ablate(work / "act.yaml")
    assert best_losses(tmp_path / "local", "act") == best_losses(work / "runs", "act")


def test_submitit_local_runs_a_sweeps_trials_as_jobs_of_one_study(work):
    (work / "sw.yaml").write_text(SWEEP)
    result = cli("sweep", "sw.yaml", "--launcher", "submitit-local", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "sweep sw: 4 trials (4 complete)" in result.stdout and sorted(trial_jobs(result.stdout)) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("block, message", [
    ("{gpus: -1}", "act.yaml: launcher.gpus = -1: must be >= 0"),
    ("{partiton: gpu}", "act.yaml: launcher.partiton: unknown key; accepted: partition, time, gpus, cpus, mem_gb, "
     "account, qos, sbatch, nodes (did you mean 'partition'?)"),
    ("{sbatch: [constraint=a100]}", "act.yaml: launcher.sbatch = 'constraint=a100': sbatch options as on its command "
     "line, e.g. --constraint=a100"),
])
def test_a_bad_launcher_block_is_one_line(work, block, message):
    (work / "act.yaml").write_text(ABLATION.format(steps=20, evals=10) + f"launcher: {block}\n")
    result = cli("ablate", "act.yaml", "--launcher", "slurm")
    assert (result.returncode, result.stderr) == (2, f"nanolab: error: {message}\n")
    assert not (work / "runs").exists()


def test_sigusr2_stops_a_run_like_sigterm_and_resume_continues_it(work):
    spec = work / "long.yaml"
    spec.write_text(tiny_yaml(max_iters=100000, eval_interval=100000))
    proc = start_cli("run", spec)
    runs = work / "runs/tiny"
    wait_for(lambda: runs.is_dir() and any((d / "metrics.jsonl").is_file() for d in runs.iterdir()),
             what="the first logged step", every=0.5)
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 140, err
    [folder] = runs.iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["status"], meta["reason"]) == ("interrupted", "SIGUSR2") and (folder / "ckpt/last.pt").is_file()
