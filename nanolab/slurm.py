"""The launcher's Slurm backend: the jobs of a plan (ablation cells, sweep workers, one DDP run) submitted with
submitit (the library behind Hydra's Slurm launcher), one Slurm job each; the only module that imports submitit.

    launcher = SlurmLauncher(SlurmOptions(partition="gpu", gpus=1), plan_folder)
    submitted = launcher.submit(jobs)     # returns once Slurm holds them: {label: job id}
    launcher.follow(jobs, board)          # --wait: the progress display until every job has left the queue

`<plan folder>/.slurm/` (`.submitit/` for the local executor) holds submitit's pickles and each job's log (`<job id>_0_log.out` / `.err`) and
`jobs.json`, the label -> job id of every submission, so that a rerun submits only what is neither done (the run
folder says so) nor still in Slurm's queue (`squeue`: no accounting database is needed). Everything there
is read by the compute nodes: the runs root must be on a file system they share.

In a job, the run sets torch's threads to the CPUs Slurm gave it. `scancel` sends SIGTERM: the run ends its
step, saves and is `interrupted`, and the next command continues it. Near its time limit (or when preempted)
Slurm sends SIGUSR2 (`--signal=USR2@90`, submitit's default): the run saves the same way and the job puts
itself back in the queue (`scontrol requeue`), where it continues from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nanolab import files
from nanolab.config import ConfigError
from nanolab.errors import NanolabError
from nanolab.launcher import Board, Outcome, Task, execute
from nanolab.runfolder import RunFolder
from nanolab.vocab import EXIT_OK, STATUS_EXIT, RunStatus

POLL_SECONDS = 5.0
GONE = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
        "TIMEOUT"}  # states in which squeue may still list a job that will not run again
CLUSTERS = ("slurm", "local")  # local: submitit's executor that runs the same jobs as subprocesses, no daemons


@dataclass(frozen=True)
class SlurmOptions:
    """The `launcher:` block of an ablation or sweep file; flags of the same names win."""

    partition: str | None = None
    time: int = 60  # minutes a job may run (sbatch --time); the run saves and requeues 90 s before
    gpus: int = 0  # GPUs per node
    cpus: int | None = None  # CPUs per task, and the run's torch threads; default 8 with GPUs, else 1
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()  # more sbatch options, as on its command line: "--constraint=a100", "--exclusive"
    nodes: int = 1  # for one DDP run (`nanolab run --launcher slurm`); a cell or a sweep worker is one process
    cluster: str = "slurm"

    def __post_init__(self):
        for key in ("time", "nodes"):
            if getattr(self, key) < 1:
                raise ConfigError(key, getattr(self, key), "must be >= 1")
        if self.gpus < 0:
            raise ConfigError("gpus", self.gpus, "must be >= 0")
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError("cpus", self.cpus, "must be >= 1 (or null: 8 with GPUs, else 1)")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError("mem_gb", self.mem_gb, "must be > 0 (or null: the partition's default)")
        for line in self.sbatch:
            if not line.startswith("--") or line == "--":
                raise ConfigError("sbatch", line, "sbatch options as on its command line, e.g. --constraint=a100")
        if self.cluster not in CLUSTERS:
            raise ConfigError("cluster", self.cluster, f"one of: {', '.join(CLUSTERS)}")

    @property
    def cpus_per_task(self) -> int:
        return self.cpus or (8 if self.gpus else 1)  # a task drives one GPU: a cell, a worker or a DDP rank

    def with_flags(self, **flags: Any) -> SlurmOptions:
        """These options with every flag that was given (not None) in place of the file's value."""
        try:
            return dataclasses.replace(self, **{k: (tuple(v) if k == "sbatch" else v) for k, v in flags.items()
                                                if v is not None and v != [] and v != ()})
        except ConfigError as exc:
            raise NanolabError(f"--{exc.key.replace('_', '-')} {exc.value}: {exc.accepted}") from None

    def executor_parameters(self, tasks_per_node: int = 1) -> dict[str, Any]:
        extra = dict(line[2:].split("=", 1) if "=" in line else (line[2:], True) for line in self.sbatch)
        parameters = {"timeout_min": self.time, "nodes": self.nodes, "tasks_per_node": tasks_per_node,
                      "cpus_per_task": self.cpus_per_task, "slurm_additional_parameters": extra}
        optional = {"gpus_per_node": self.gpus or None, "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                    "slurm_account": self.account, "slurm_qos": self.qos}
        return {**parameters, **{k: v for k, v in optional.items() if v is not None}}


FLAGS = ("partition", "time", "gpus", "cpus", "mem_gb", "account", "qos", "sbatch", "nodes")  # as on the CLI


def options(block: SlurmOptions, args) -> SlurmOptions:
    """A plan's `launcher:` block with the command's flags in place of its values (`--launcher submitit-local`:
    submitit's local executor)."""
    cluster = "local" if args.launcher == "submitit-local" else "slurm"
    return block.with_flags(cluster=cluster, **{key: getattr(args, key, None) for key in FLAGS})


@dataclass(frozen=True)
class Job:
    """A task to run as one Slurm job: `task.fn(*task.args, progress=False)` in the job's process."""

    task: Task
    tasks_per_node: int = 1  # > 1: a DDP run, each task a rank


class SlurmLauncher:
    def __init__(self, options: SlurmOptions, plan_folder: Path):
        self.options, self.folder = options, plan_folder / (".slurm" if options.cluster == "slurm" else ".submitit")
        self.book = self.folder / "jobs.json"
        self._local: dict[str, Any] = {}  # label -> submitit job, for the local executor (its jobs are children)

    def submitted(self) -> dict[str, str]:
        """label -> job id of every earlier submission of this plan."""
        return json.loads(self.book.read_text()) if self.book.is_file() else {}

    def queued(self) -> dict[str, str]:
        """label -> Slurm state of this plan's jobs that are still in the queue (pending, running, requeued)."""
        if self.options.cluster == "local":
            return {label: "RUNNING" for label, job in self._local.items() if not job.done()}
        book = self.submitted()
        states = squeue(set(book.values()))
        return {label: states[job_id] for label, job_id in book.items() if job_id in states}

    def submit(self, jobs: list[Job]) -> dict[str, str]:
        """Submit `jobs` (one Slurm job each), a line each with its id and log; returns label -> job id, also
        recorded in jobs.json."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.options.cluster)
        ids = {}
        for job in jobs:
            executor.update_parameters(name=job.task.label, **self._parameters(job))
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
        parameters = self.options.executor_parameters(job.tasks_per_node)
        if self.options.cluster == "local":  # the local executor knows only the generic parameters
            parameters = {k: v for k, v in parameters.items() if not k.startswith("slurm_")}
        return parameters

    def jobs_table(self, labels: list[str], describe: Callable[[str], str]) -> str:
        """A line per label: its last job id, its state in Slurm's queue (or "-" once it left), `describe(label)`."""
        book, queued = self.submitted(), self.queued()
        rows = [(label, book.get(label, "-"), queued.get(label, "-"), describe(label)) for label in labels]
        widths = [max(len(row[i]) for row in [("run", "job", "slurm", ""), *rows]) for i in range(3)]
        header = ("run", "job", "slurm", "status")
        return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3]])
                         for row in [header, *rows])

    def paths(self, label: str):
        """submitit's files of the job last submitted as `label`: its log (.stdout, .stderr) and result pickle."""
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder / "%j", self.submitted()[label])

    def follow(self, jobs: list[Job], board: Board, on_end: Callable[[Task, Outcome], None]) -> None:
        """Show each job's start and end on `board` until none of them is queued; an outcome is what the job
        returned, else what its run folder says (`finished_outcome`)."""
        waiting = {job.task.label: job.task for job in jobs}
        running: set[str] = set()
        while waiting:
            queued = self.queued()
            for label in [l for l in waiting if queued.get(l) == "RUNNING" and l not in running]:
                running.add(label)
                board.started(waiting[label])
            for label in [l for l in waiting if l not in queued]:
                task = waiting.pop(label)
                if label not in running:
                    board.started(task)
                outcome = finished_outcome(task, self.paths(label))
                board.ended(task, outcome)
                on_end(task, outcome)
            if waiting:
                time.sleep(POLL_SECONDS if self.options.cluster == "slurm" else 0.5)


def submit_run(cfg, options: SlurmOptions, tasks_per_node: int, wait: bool) -> int:
    """`nanolab run SPEC --launcher slurm`: one job of `options.nodes` x `tasks_per_node` ranks (env:// rendezvous
    from Slurm's variables, as torchrun's), a new run id; returns the exit status."""
    from nanolab.distributed import World, check_batch
    from nanolab.plan import run_spec
    from nanolab.runfolder import RunStore, new_run_id

    check_batch(World(0, options.nodes * tasks_per_node), cfg.train.batch_size)
    run_id, store = new_run_id(), RunStore()
    job = Job(Task(run_id, store.folder(cfg.name, run_id).path, run_spec, (cfg, run_id)), tasks_per_node)
    launcher = SlurmLauncher(options, store.root / cfg.name)
    print(f"run {cfg.name}/{run_id}: one job of {options.nodes} node(s) x {tasks_per_node} task(s)", flush=True)
    launcher.submit([job])
    if not (wait or options.cluster == "local"):
        return EXIT_OK
    ended: list[Outcome] = []
    launcher.follow([job], Board(1, "best/val_loss"), lambda task, outcome: ended.append(outcome))
    return STATUS_EXIT[ended[0].status]


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
    outcome = execute(job.task, progress=False)
    if outcome.status is RunStatus.INTERRUPTED and "SIGUSR2" in outcome.text and "SLURM_JOB_ID" in os.environ:
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
    return outcome
