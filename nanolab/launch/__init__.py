"""Launch: the one protocol that runs the jobs of a plan (ablation cells, sweep trials, one DDP run).

    launcher = open_launcher(LaunchOptions(backend="local", workers=2), plan_folder)
    launched = launcher.run(next_task, on_end, board)   # next_task() -> Task | None, asked whenever a slot is free
    print(state_text(launcher.state(labels, describe)))  # a row per job: where it is, what its run says

Front-ends propose tasks and never ask which backend runs them; `open_launcher` is the one place that chooses,
from one typed `LaunchOptions`:

    local.py     processes on this machine: N workers, cores / N threads each, one GPU each, dead ones replaced
    slurm.py     one Slurm job per task through submitit (the only importer of submitit); requeue on preemption
    torchrun.py  one task over N processes of a DDP world (torch.distributed.run)

Every backend reports each task's `Outcome` to `on_end` and returns how the whole call ended: DONE, INTERRUPTED
(Ctrl-C or SIGTERM: running tasks saved and stopped, the next call continues them) or SUBMITTED (Slurm without
--wait: the jobs are queued and run on their own).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from nanolab.config import ConfigError
from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder
from nanolab.vocab import RunStatus

BACKENDS = ("local", "slurm", "submitit-local")  # submitit-local: submitit's executor running Slurm's jobs here


@dataclass(frozen=True)
class Task:
    """One job: `fn(*args, progress=bool) -> Outcome`, a module-level function so another process can run it."""

    label: str  # e.g. "activation=relu-s2", "trial 3 [train.lr=0.001]"
    folder: Path | None  # the run folder it writes, marked failed if its process dies
    fn: Callable[..., Outcome]
    args: tuple = ()


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    text: str = ""  # "best/val_loss 2.0143", or the reason it did not finish
    value: float | None = None  # the figure that ranks tasks for "best so far"
    seconds: float = 0.0


class Launched(Enum):
    DONE = "done"
    INTERRUPTED = "interrupted"
    SUBMITTED = "submitted"


def execute(task: Task, progress: bool) -> Outcome:
    """Run one task here; an exception is a failed outcome with its one-line reason, not the end of the plan."""
    started = time.perf_counter()
    try:
        outcome = task.fn(*task.args, progress=progress)
    except Exception as exc:  # noqa: BLE001 - a crashed job is recorded and the others go on
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if task.folder is not None:
            RunFolder(task.folder).mark_failed(reason)
        outcome = Outcome(RunStatus.FAILED, reason)
    return Outcome(outcome.status, outcome.text, outcome.value, time.perf_counter() - started)


class Board:
    """The progress display of a plan: a line per task start and end, then the running count and best so far."""

    def __init__(self, total: int, metric: str, direction: str = "minimize", stream=None):
        self.total, self.metric, self.sign = total, metric, 1 if direction == "minimize" else -1
        self.stream = stream or sys.stdout
        self.done = self.failed = self.running = 0
        self.best: tuple[float, str] | None = None

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def started(self, task: Task) -> None:
        self.running += 1
        self.say(f"{task.label}: started")

    def ended(self, task: Task, outcome: Outcome) -> None:
        self.running -= 1
        self.done += 1
        self.failed += outcome.status is RunStatus.FAILED
        if outcome.value is not None and (self.best is None or self.sign * outcome.value < self.sign * self.best[0]):
            self.best = (outcome.value, task.label)
        text = f", {outcome.text}" if outcome.text else ""
        self.say(f"{task.label}: {outcome.status}{text} ({outcome.seconds:.0f}s)")
        best = f"; best {self.best[1]} {self.metric} {self.best[0]:.4f}" if self.best else ""
        self.say(f"  done {self.done}/{self.total}, running {self.running}, failed {self.failed}{best}")


class Launcher:
    """Runs tasks until `next_task` returns None, `on_end(task, outcome)` after each; see the module docstring.
    `children`: its tasks run in this process or its children, so they end when it does (a Slurm job does not)."""

    children = True

    def run(self, next_task: Callable[[], Task | None], on_end: Callable[[Task, Outcome], None],
            board: Board) -> Launched:
        raise NotImplementedError

    def state(self, labels: list[str], describe: Callable[[str], dict]) -> list[dict]:
        """A row per label: {"run": label, **what its run folder says (`describe`)}; backends with a queue add their
        columns (`job`, `slurm`)."""
        return [{"run": label, **describe(label)} for label in labels]


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
    nodes: int = 1  # for one DDP run (`nanolab run --launcher slurm`); a cell or a trial is one process

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


@dataclass(frozen=True)
class LaunchOptions:
    """How a command runs its jobs: the `--launcher`, `--workers`, `--nproc` and `--wait` flags and the Slurm
    options (a plan file's `launcher:` block with the flags in place of its values)."""

    backend: str = "local"
    workers: int | None = None  # local: processes (default 1); Slurm: jobs in the queue at once (default: all)
    nproc: int = 1  # processes of one DDP run
    wait: bool = False  # Slurm: follow the jobs until they end (submitit-local always does)
    slurm: SlurmOptions = SlurmOptions()

    @classmethod
    def from_args(cls, args, block: SlurmOptions = SlurmOptions()) -> LaunchOptions:
        """A command's flags (argparse's namespace), the Slurm ones over a plan file's `launcher:` block. On Slurm
        a run (`nanolab run`) has a rank per GPU of a node, else --nproc; a plan's task is one process."""
        slurm = block.with_flags(**{key: getattr(args, key, None) for key in FLAGS})
        nproc = getattr(args, "nproc", 1)
        if args.launcher != "local" and hasattr(args, "nproc"):
            nproc = slurm.gpus or nproc
        return cls(args.launcher, getattr(args, "workers", None), nproc, args.wait, slurm)

    @property
    def here(self) -> bool:
        """One process on this machine: nothing to launch."""
        return self.backend == "local" and self.nproc == 1

    @property
    def world_size(self) -> int:
        """The processes of one DDP run."""
        return self.nproc * (self.slurm.nodes if self.backend != "local" else 1)

    def describe(self) -> str:
        """'2 worker(s)', 'torchrun over 2 processes', 'Slurm jobs (at most 4 queued at once)'."""
        if self.backend == "local":
            return f"torchrun over {self.nproc} processes" if self.nproc > 1 else f"{self.workers or 1} worker(s)"
        where = "Slurm" if self.backend == "slurm" else "submitit's local executor"
        if self.nproc > 1:
            return f"one job of {self.slurm.nodes} node(s) x {self.nproc} task(s) on {where}"
        return f"a job per task on {where}" + (f", at most {self.workers} at once" if self.workers else "")

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise NanolabError(f"--launcher {self.backend}: expected one of {', '.join(BACKENDS)}")
        if self.workers is not None and self.workers < 1:
            raise NanolabError(f"--workers {self.workers}: expected a number of processes >= 1")
        if self.nproc < 1:
            raise NanolabError(f"--nproc {self.nproc}: expected a number of processes >= 1")


def open_launcher(options: LaunchOptions, folder: Path) -> Launcher:
    """The backend `options` name; `folder` is the plan's (Slurm keeps its job records and logs under it)."""
    if options.backend == "local" and options.nproc > 1:
        from nanolab.launch.torchrun import TorchrunLauncher

        return TorchrunLauncher(options.nproc)
    if options.backend == "local":
        from nanolab.launch.local import LocalLauncher

        return LocalLauncher(options.workers or 1)
    from nanolab.launch.slurm import SlurmLauncher

    return SlurmLauncher(options, folder)


def state(folder: Path, labels: list[str] | None, describe: Callable[[str], dict]) -> list[dict]:
    """`nanolab status`: each job's row, with Slurm's columns where the plan's jobs were submitted there;
    `labels` None: every job submitted to Slurm (none when none was)."""
    from nanolab.launch.slurm import SlurmLauncher, submitted_to

    cluster = submitted_to(folder)
    if cluster is None:
        return Launcher().state(labels or [], describe)
    launcher = SlurmLauncher(LaunchOptions("slurm" if cluster == "slurm" else "submitit-local"), folder)
    return launcher.state(list(launcher.submitted()) if labels is None else labels, describe)


def state_text(rows: list[dict]) -> str:
    """The rows as `nanolab status` prints them: a line per job (its label, then what its run says), as a table
    under a header where Slurm's columns are there."""
    def said(row: dict) -> str:
        figures = [f"{key} {value:.4f}" for key, value in row.items()
                   if key not in ("run", "job", "slurm", "status") and value is not None]
        return ", ".join([row["status"], *figures])

    if not any("job" in row for row in rows):
        return "\n".join(f"{row['run']}  {said(row)}" for row in rows)
    table = [("run", "job", "slurm", "status"), *((row["run"], row["job"], row["slurm"], said(row)) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(line[:3], widths)), line[3]]) for line in table)
