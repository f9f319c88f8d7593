"""DDP under torchrun on the CPU (gloo, 2 processes): same losses as one process, one run folder, resume,
and a failing rank that ends the job."""

import json
import signal
import time
from pathlib import Path

import pytest
from helpers import cli, start_cli, tiny_yaml, wait_for


def spec(tmp_path: Path, iters: int = 40) -> Path:
    """tmp_path/ddp.yaml: the tiny spec at batch 8 in 2 micro-batches, `iters` steps, a checkpoint every 10."""
    path = tmp_path / "ddp.yaml"
    path.write_text(tiny_yaml("ddp", seed=7, batch_size=8, grad_accum=2, max_iters=iters, lr=3.0e-3, warmup_iters=5,
                              checkpoint_interval=10))
    return path


def evals(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val/loss"], r["train/eval_loss"]) for r in rows if "val/loss" in r]


def run_dirs(tmp_path) -> list[Path]:
    return sorted((tmp_path / "runs" / "ddp").iterdir())


def test_two_processes_match_one(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    for folder, nproc in ((one, "1"), (two, "2")):
        folder.mkdir()
        proc = cli("run", spec(folder), "--nproc", nproc, runs=folder / "runs", timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("finished:") == 1  # one line for the job, not one per rank
    (single,), (double,) = run_dirs(one), run_dirs(two)  # exactly one run folder each
    assert json.loads((double / "meta.json").read_text())["world_size"] == 2
    a, b = evals(single), evals(double)
    assert [s for s, *_ in a] == [s for s, *_ in b] == [10, 20, 30, 40]
    for (_, val_a, train_a), (_, val_b, train_b) in zip(a, b):
        assert val_b == pytest.approx(val_a, abs=1e-3) and train_b == pytest.approx(train_a, abs=1e-3)


def test_a_two_process_run_resumes_an_interrupted_one(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    assert cli("run", spec(reference, iters=120), runs=reference / "runs", timeout=300).returncode == 0
    proc = start_cli("run", spec(tmp_path, iters=120), env={"NANOLAB_RUNS": str(tmp_path / "runs")})
    wait_for(lambda: list((tmp_path / "runs").glob("ddp/*/ckpt/last.pt")), timeout=120, what="a checkpoint",
             every=0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    (run_dir,) = run_dirs(tmp_path)
    stopped = evals(run_dir)
    resumed = cli("run", "--resume", run_dir, "--nproc", "2", runs=tmp_path / "runs", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "finished"
    (ref_dir,) = run_dirs(reference)
    a, b = evals(ref_dir), evals(run_dir)
    assert len(b) == 12 and len(stopped) < 12
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (_, val_a, _), (_, val_b, _) in zip(a, b):
        assert val_b == pytest.approx(val_a, abs=1e-3)


FAIL_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import nanolab.train_loop
    def broken(self, *args, **kwargs):
        raise RuntimeError("rank 1 lost its data")
    nanolab.train_loop.Loop.evaluate = broken
"""


def test_a_failing_rank_ends_the_job(tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    started = time.time()
    proc = cli("run", spec(tmp_path), "--nproc", "2", runs=tmp_path / "runs",
               env={"PYTHONPATH": str(tmp_path / "inject")}, timeout=300)
    assert proc.returncode != 0
    assert "rank 1 lost its data" in proc.stderr
    assert time.time() - started < 150
