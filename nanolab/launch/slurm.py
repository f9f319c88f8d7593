"""The Slurm backend: each task of a plan (an ablation's cell, a sweep's trial, one DDP run) is one Slurm job,
submitted with submitit (the library behind Hydra's Slurm launcher); the only module that imports submitit.

    launcher = SlurmLauncher(LaunchOptions("slurm", workers=4, wait=True, slurm=SlurmOptions(gpus=1)), folder)
    launcher.run(next_task, on_end, board)   # submits (at most `workers` queued at once), follows with --wait

`<plan folder>/.slurm/` (`.submitit/` for the local executor) holds submitit's pickles and each job's log (`<job id>_0_log.out` / `.err`) and
`jobs.json`, the label -> job id of every submission, so that a rerun submits only what is neither done (the run
folder says so; the front-end proposes nothing else) nor still in Slurm's queue (`squeue`: no accounting database
is needed). Everything there is read by the compute nodes: the runs root must be on a file system they share.

Without --wait, `run` submits what it may and returns SUBMITTED; with it (and always with submitit's local
executor, whose jobs are this process's children) it follows the jobs, submitting the next task as a slot frees,
until none is left. In a job, the run sets torch's threads to the CPUs Slurm gave it. `scancel` sends SIGTERM: the
run ends its step, saves and is `interrupted`, and the next command continues it. Near its time limit (or when
preempted) Slurm sends SIGUSR2 (`--signal=USR2@90`, submitit's default): the run saves the same way and the job
puts itself back in the queue (`scontrol requeue`), where it continues from that checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nanolab import files
from nanolab.errors import NanolabError
from nanolab.launch import Board, Launched, Launcher, LaunchOptions, Outcome, Task, execute
from nanolab.runfolder import RunFolder, RunStore
from nanolab.vocab import RunStatus

POLL_SECONDS = 5.0
GONE = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
        "TIMEOUT"}  # states in which squeue may still list a job that will not run again
CLUSTERS = ("slurm", "local")  # submitit's names: Slurm, and its local executor


def submitted_to(plan_folder: Path) -> str | None:
    """The cluster this plan's jobs were submitted to, or None when none was."""
    return next((c for c in CLUSTERS if (RunStore.job_records(plan_folder, c) / "jobs.json").is_file()), None)


@dataclass(frozen=True)
class Job:
    """A task to run as one Slurm job: `task.fn(*task.args, progress=False)` in the job's process."""

    task: Task
    tasks_per_node: int = 1  # > 1: a DDP run, each task a rank


class SlurmLauncher(Launcher):
    def __init__(self, options: LaunchOptions, plan_folder: Path):
        self.options, self.cluster = options, "local" if options.backend == "submitit-local" else "slurm"
        if self.cluster == "slurm" and shutil.which("srun") is None:  # submitit's own check is a traceback
            raise NanolabError("--launcher slurm: no Slurm here (srun is not on PATH); run it on a machine of the "
                               "cluster (a login node), or use --launcher local")
        self.children = self.cluster == "local"
        self.folder = RunStore.job_records(plan_folder, self.cluster)
        self.book = self.folder / "jobs.json"
        self._local: dict[str, Any] = {}  # label -> submitit job, for the local executor (its jobs are children)

    def run(self, next_task, on_end, board) -> Launched:
        follow, slots = self.options.wait or self.cluster == "local", self.options.workers
        queued, in_flight, running = self.queued(), {}, set()
        more = True
        try:
            while True:
                while more and (slots is None or len(in_flight) < slots):
                    if (task := next_task()) is None:
                        more = False
                    elif task.label in queued:  # still queued from an earlier call: followed, not submitted again
                        in_flight[task.label] = task
                    else:
                        self.submit([Job(task, self.options.nproc)])
                        in_flight[task.label] = task
                if not in_flight:
                    return Launched.DONE
                if not follow:
                    return Launched.SUBMITTED
                self._poll(in_flight, running, board, on_end)
        except KeyboardInterrupt:  # the jobs go on in Slurm's queue; `nanolab status` follows them
            return Launched.SUBMITTED if self.cluster == "slurm" else Launched.INTERRUPTED

    def _poll(self, in_flight: dict[str, Task], running: set[str], board: Board, on_end) -> None:
        """Wait until one job of `in_flight` has left the queue; report its start and end (and any other's)."""
        while True:
            queued = self.queued()
            for label in [l for l in in_flight if queued.get(l) == "RUNNING" and l not in running]:
                running.add(label)
                board.started(in_flight[label])
            left = [l for l in in_flight if l not in queued]
            for label in left:
                task = in_flight.pop(label)
                if label not in running:
                    board.started(task)
                running.discard(label)
                outcome = finished_outcome(task, self.paths(label))
                board.ended(task, outcome)
                on_end(task, outcome)
            if left:
                return
            time.sleep(POLL_SECONDS if self.cluster == "slurm" else 0.5)

    def submitted(self) -> dict[str, str]:
        """label -> job id of every earlier submission of this plan."""
        return json.loads(self.book.read_text()) if self.book.is_file() else {}

    def queued(self) -> dict[str, str]:
        """label -> Slurm state of this plan's jobs that are still in the queue (pending, running, requeued)."""
        if self.cluster == "local":
            return {label: "RUNNING" for label, job in self._local.items() if not job.done()}
        book = self.submitted()
        states = squeue(set(book.values()))
        return {label: states[job_id] for label, job_id in book.items() if job_id in states}

    def submit(self, jobs: list[Job]) -> dict[str, str]:
        """Submit `jobs` (one Slurm job each), a line each with its id and log; returns label -> job id, also
        recorded in jobs.json."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        ids = {}
        for job in jobs:
            executor.update_parameters(name=re.sub(r"[^\w.=+-]+", "_", job.task.label), **self._parameters(job))
            try:
                submitted = executor.submit(run_job, job)
            except Exception as exc:  # noqa: BLE001 - sbatch's refusal is the user's to read, in one line
                raise NanolabError(f"sbatch refused {job.task.label}: {str(exc).strip().splitlines()[-1]}") from None
            ids[job.task.label] = str(submitted.job_id)
            self._local[job.task.label] = submitted
            files.write_json(self.book, {**self.submitted(), job.task.label: ids[job.task.label]})
            print(f"{job.task.label}: job {submitted.job_id}, log {self.paths(job.task.label).stdout}", flush=True)
        return ids

    def _parameters(self, job: Job) -> dict[str, Any]:
        parameters = self.options.slurm.executor_parameters(job.tasks_per_node)
        if self.cluster == "local":  # the local executor knows only the generic parameters
            parameters = {k: v for k, v in parameters.items() if not k.startswith("slurm_")}
        return parameters

    def state(self, labels: list[str], describe: Callable[[str], dict]) -> list[dict]:
        """A row per label: its last job id, its state in Slurm's queue (or "-" once it left), `describe(label)`."""
        book, queued = self.submitted(), self.queued()
        return [{"run": label, "job": book.get(label, "-"), "slurm": queued.get(label, "-"), **describe(label)}
                for label in labels]

    def paths(self, label: str):
        """submitit's files of the job last submitted as `label`: its log (.stdout, .stderr) and result pickle."""
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder / "%j", self.submitted()[label])


def squeue(job_ids: set[str]) -> dict[str, str]:
    """job id -> state of those of `job_ids` in Slurm's queue and not in a final state."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T", "--jobs", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise NanolabError("squeue: not found; the Slurm launcher needs Slurm's commands on this machine") from None
    if out.returncode and "Invalid job id" not in out.stderr:
        raise NanolabError(f"squeue failed: {out.stderr.strip().splitlines()[-1]}")
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return {job_id: state for job_id, state in states.items() if state not in GONE}


def finished_outcome(task: Task, paths) -> Outcome:
    """How a job that left the queue ended: what it returned, else what its run folder says."""
    from submitit.core.utils import pickle_load

    if paths.result_pickle.is_file():
        kind, value = pickle_load(paths.result_pickle)
        if kind == "success":
            return value
        reason = f"the job failed: {value.strip().splitlines()[-1]} (log: {paths.stderr})"
    else:
        reason = f"the job ended without a result (cancelled or killed; log: {paths.stderr})"
    if task.folder is not None and (folder := RunFolder(task.folder)).is_run():
        folder.mark_failed(reason)  # a run still marked running was killed: SIGKILL, node failure, out of memory
        return Outcome(folder.status, folder.read_meta().get("reason", ""))  # else it saved: scancel's SIGTERM
    return Outcome(RunStatus.FAILED, reason)


def run_job(job: Job) -> Outcome:
    """What a Slurm job runs: its task with the CPUs it was given; requeued after SIGUSR2 (time limit, preemption)."""
    import torch

    torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", torch.get_num_threads())))
    if job.tasks_per_node > 1 or int(os.environ.get("SLURM_NNODES", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the run's own handler: its SIGINT is an outcome, not an exit
    outcome = execute(job.task, progress=False)
    if outcome.status is RunStatus.INTERRUPTED and "SIGUSR2" in outcome.text and "SLURM_JOB_ID" in os.environ:
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
    return outcome
