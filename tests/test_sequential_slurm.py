"""Sequential ablations on a real Slurm cluster (`slurm_cluster.py`): a round is a batch of jobs. With --wait one
call submits a round, follows its jobs, takes the look and submits the next round; without it each call submits
a round and returns, and the next call (once its jobs have ended) takes the look and submits the next round. With
a `tune:` block each variant's study runs as jobs once, before the first round."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import cli, tiny_yaml, wait_for

EXPERIMENT = tiny_yaml(seed=1, warmup_iters=0, sample_tokens=0)
SEQUENTIAL = """\
name: seq
experiment: tiny.yaml
overrides: {train.max_iters: 10, train.eval_interval: 5}
grid: {model.activation: [gelu, relu]}
seeds: {min: 2, max: 3}
decide: {fwer: 0.05}
"""
TUNE = """\
tune:
  space: {train.lr: {choice: [1.0e-3, 3.0e-2]}}
  sampler: grid
  trials: 2
  overrides: {train.max_iters: 5}
"""
ROUND_1 = ["activation=gelu-s1", "activation=gelu-s2", "activation=relu-s1", "activation=relu-s2"]
ROUND_2 = ["activation=gelu-s3", "activation=relu-s3"]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """The tiny experiment and seq.yaml in a folder of their own, its own runs root, and cwd there."""
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    (tmp_path / "seq.yaml").write_text(SEQUENTIAL)
    return tmp_path



def job_ids(stdout: str) -> dict[str, str]:
    """Run id -> job id from the lines `<run id>: job <id>, log <path>` that submitting a cell prints."""
    return dict(re.findall(r"^(activation=\S+): job (\d+)", stdout, flags=re.M))


def trial_jobs(stdout: str) -> list[str]:
    """The job ids of the lines `<variant> trial <n> [<params>]: job <id>, log <path>` (a tuning trial submitted)."""
    return re.findall(r"^activation=\w+ trial \d+ \[[^\]]*\]: job (\d+)", stdout, flags=re.M)


GONE = (  # states squeue may still list for a job that has left
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def in_queue(ids) -> list[str]:
    """Those of the job ids `ids` that Slurm still lists (pending, running, completing)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)], capture_output=True, text=True)
    return [job for job, state in (line.split() for line in out.stdout.splitlines()) if state not in GONE]


def looks(work: Path) -> list[dict]:
    return json.loads((work / "runs/seq/decisions.json").read_text())["looks"]


def last_look(work: Path) -> str:
    """The line that says the look at 3 seeds, as recorded: 'look at 3 seeds (+2 runs): activation=relu <decision>'
    (10-step runs may or may not tell relu from gelu at the last look, where the boundary is an ordinary t's)."""
    return f"look at 3 seeds (+2 runs): activation=relu {looks(work)[1]['variants']['activation=relu']['decision']}"


def meta(work: Path, run_id: str) -> dict:
    return json.loads((work / "runs/seq" / run_id / "meta.json").read_text())


def node() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True, check=True).stdout.split()[0]


def set_node(state: str) -> None:
    """DRAIN (no job starts: submitted jobs stay PENDING) or RESUME the cluster's one node."""
    extra = ["Reason=a test holds the queue"] if state == "DRAIN" else []
    subprocess.run(["scontrol", "update", f"NodeName={node()}", f"State={state}", *extra], check=True)


def test_without_wait_each_call_submits_a_round_and_the_next_takes_its_look(slurm, work):  # noqa: F811
    submit = ["ablate", "seq.yaml", "--launcher", "slurm", "--partition", slurm.partition, "--cpus", "1"]
    first = cli(*submit)
    assert first.returncode == 0, first.stderr
    round_1 = job_ids(first.stdout)
    assert sorted(round_1) == ROUND_1 and "round at 2 seeds: 4 runs, 0 already done, 4 to run" in first.stdout
    assert "follow them: nanolab status seq.yaml" in first.stdout and not (work / "runs/seq/decisions.json").exists()
    status = cli("status", "seq.yaml")
    assert status.returncode == 0, status.stderr
    for run_id, job in round_1.items():  # every submitted job is listed, whether or not its run has begun
        assert re.search(rf"^{re.escape(run_id)} +{job} ", status.stdout, re.M), status.stdout
    assert "no look taken yet" in status.stdout
    assert re.search(r"^next round: 2 seeds of activation=relu and the baseline \(4 runs, [0-4] ended\)$",
                     status.stdout, re.M), status.stdout

    wait_for(lambda: not in_queue(round_1.values()), timeout=300, what="round 1's jobs to leave the queue")
    set_node("DRAIN")  # the next round's jobs wait in the queue until RESUME: the calls below see them queued
    try:
        second = cli(*submit)
        assert second.returncode == 0, second.stderr
        assert "ablation seq: look at 2 seeds (+4 runs): activation=relu undecided" in second.stdout
        round_2 = job_ids(second.stdout)
        assert sorted(round_2) == ROUND_2 and "round at 3 seeds: 6 runs, 4 already done, 2 to run" in second.stdout
        assert [look["seeds"] for look in looks(work)] == [2]
        recorded = (work / "runs/seq/decisions.json").read_bytes()

        status = cli("status", "seq.yaml")
        assert "look at 2 seeds (+4 runs): activation=relu undecided" in status.stdout
        assert "| activation=relu | undecided | 1 (2 seeds) |" in status.stdout
        assert "next round: 3 seeds of activation=relu and the baseline (6 runs, 4 ended)" in status.stdout
        for run_id, job in round_2.items():
            assert re.search(rf"^{re.escape(run_id)} +{job} +PENDING +not started$", status.stdout, re.M), status.stdout

        queued = cli(*submit)  # the round is still queued: nothing is submitted again, no look is taken
        assert queued.returncode == 0, queued.stderr
        assert job_ids(queued.stdout) == {} and "look at 3 seeds" not in queued.stdout
        assert "ablation seq: look at 2 seeds (+4 runs): activation=relu undecided (recorded)" in queued.stdout
        assert "follow them: nanolab status seq.yaml" in queued.stdout
        assert (work / "runs/seq/decisions.json").read_bytes() == recorded
    finally:
        set_node("RESUME")

    wait_for(lambda: not in_queue(round_2.values()), timeout=300, what="round 2's jobs to leave the queue")
    last = cli(*submit)
    assert last.returncode == 0, last.stderr
    assert [look["seeds"] for look in looks(work)] == [2, 3]
    assert job_ids(last.stdout) == {} and f"ablation seq: {last_look(work)}" in last.stdout.splitlines()
    assert "runs: 6 used, 6 for the fixed design at 3 seeds (100%)" in last.stdout
    again = cli(*submit)
    assert again.returncode == 0 and again.stdout.count("(recorded)") == 2 and "round at" not in again.stdout
    assert json.loads((work / "runs/seq/.slurm/jobs.json").read_text()) == {**round_1, **round_2}  # a job per run
    done = cli("status", "seq.yaml")
    assert "no round left: every variant decided or seeds.max reached" in done.stdout
    assert all(re.search(rf"^{re.escape(r)} +\d+ +- +finished, best/val_loss", done.stdout, re.M)
               for r in ROUND_1 + ROUND_2), done.stdout


def test_with_wait_one_call_tunes_each_variant_once_then_runs_every_round_as_jobs(slurm, work):  # noqa: F811
    (work / "seq.yaml").write_text(SEQUENTIAL + TUNE)
    out = cli("ablate", "seq.yaml", "--launcher", "slurm", "--partition", slurm.partition, "--cpus", "1", "--wait")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(trial_jobs(out.stdout)) == 4  # 2 variants x 2 trials, each a job, all before the first round
    first_look = lines.index("ablation seq: look at 2 seeds (+4 runs): activation=relu undecided")
    second_look = lines.index(f"ablation seq: {last_look(work)}")
    cells = job_ids(out.stdout)
    assert sorted(cells) == sorted(ROUND_1 + ROUND_2)
    submitted_at = {run_id: next(i for i, line in enumerate(lines) if line.startswith(f"{run_id}: job "))
                    for run_id in cells}
    ended_at = {run_id: next(i for i, line in enumerate(lines) if line.startswith(f"{run_id}: finished"))
                for run_id in cells}
    tuning = [i for i, line in enumerate(lines) if re.match(r"activation=\w+ trial \d+ \[[^\]]*\]: finished", line)]
    assert len(tuning) == 4 and max(tuning) < min(submitted_at.values())  # the studies end before round 1 begins
    book = json.loads((work / "runs/seq/.slurm/jobs.json").read_text())
    assert sorted(book[label] for label in book if " trial " in label) == sorted(trial_jobs(out.stdout))
    assert max(ended_at[r] for r in ROUND_1) < first_look < min(submitted_at[r] for r in ROUND_2)
    assert max(ended_at[r] for r in ROUND_2) < second_look
    assert not any(line.startswith("tuning activation=") for line in lines[first_look:])  # no study runs again
    for variant in ("activation=gelu", "activation=relu"):
        best = json.loads((work / "runs/sweeps" / f"seq-tune-{variant}" / "best.json").read_text())["params"]
        assert [meta(work, f"{variant}-s{s}")["tuned"] for s in (1, 2, 3)] == [best] * 3  # every round at its best
        trials = sorted(p.name for p in (work / "runs" / f"seq-tune-{variant}").iterdir() if p.is_dir())
        assert trials == ["trial-0", "trial-1"]
    assert [look["seeds"] for look in looks(work)] == [2, 3]
