"""The `slurm` fixture runs a real cluster: a batch job runs to COMPLETED and writes its output."""

from __future__ import annotations

import subprocess


def test_sbatch_wrap_job_completes(slurm, tmp_path):
    out = tmp_path / "out.txt"
    submit = subprocess.run(["sbatch", "--parsable", "--wait", f"--output={out}", "--wrap", "echo hello from $SLURM_JOB_ID"],
                            env=slurm.env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    job_id = submit.stdout.strip()
    state = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", "--jobs", job_id], env=slurm.env,
                           capture_output=True, text=True, check=True)
    assert state.stdout.strip() == "COMPLETED"  # squeue keeps a finished job for MinJobAge (300 s)
    assert out.read_text() == f"hello from {job_id}\n"
