"""The launcher: runs the jobs of a plan (ablation cells, sweep trials) over N workers on this machine.

    launcher = LocalLauncher(workers=2)
    launcher.run(next_task, on_end, board)     # next_task() -> Task | None, asked whenever a worker is free

One set of policies for every front-end:
- one worker runs its tasks in this process (the run's progress bar shows its step); N > 1 workers are
  processes, each with cores / N torch threads and, where several GPUs are visible, one GPU of its own;
- a task that raises is recorded as failed and the others go on;
- a worker that dies (kill -9, out of memory) is replaced by a new one with the same GPU and threads, its run
  folder is marked failed with the reason, and the front-end decides whether to retry the task;
- workers never outlive the command: each watches its parent and stops (as after SIGTERM: the step ends, the
  run saves and is `interrupted`) when the parent is gone;
- Ctrl-C stops starting tasks; the running ones end their step, save and report `interrupted`.

`Launcher` is the interface a Slurm backend implements too: `run(next_task, on_end, board) -> bool`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder
from nanolab.vocab import RunStatus

PARENT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Task:
    """One job: `fn(*args, progress=bool) -> Outcome`, a module-level function so a worker process can run it."""

    label: str  # e.g. "position=rotary-s2", "trial 3 [train.lr=0.001]"
    folder: Path | None  # the run folder it writes, marked failed if the worker dies; None: several (a sweep worker)
    fn: Callable[..., Outcome]
    args: tuple = ()


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    text: str = ""  # "best/val_loss 2.0143", or the reason it did not finish
    value: float | None = None  # the figure that ranks tasks for "best so far"
    seconds: float = 0.0


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


class Launcher:
    """Runs tasks until `next_task` returns None; `on_end(task, outcome)` after each. Returns False when the
    user interrupted it (Ctrl-C), True otherwise."""

    def run(self, next_task: Callable[[], Task | None], on_end: Callable[[Task, Outcome], None],
            board: Board) -> bool:
        raise NotImplementedError


class LocalLauncher(Launcher):
    def __init__(self, workers: int = 1):
        if workers < 1:
            raise NanolabError(f"--workers {workers}: expected a number of processes >= 1")
        self.workers = workers

    def run(self, next_task, on_end, board) -> bool:
        if self.workers <= 1:
            return self._run_here(next_task, on_end, board)
        return _Pool(self.workers, board).run(next_task, on_end)

    @staticmethod
    def _run_here(next_task, on_end, board) -> bool:
        try:
            while (task := next_task()) is not None:
                board.started(task)
                outcome = execute(task, progress=True)
                board.ended(task, outcome)
                on_end(task, outcome)
                if outcome.status is RunStatus.INTERRUPTED:
                    return False
        except KeyboardInterrupt:  # between runs: a run itself turns Ctrl-C into `interrupted`
            return False
        return True


# ----------------------------------------------------------------------------- worker processes


def cpu_count() -> int:
    """The cores this process may use (a Slurm or cgroup allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    task: Task | None = None


class _Pool:
    """N worker processes fed one task at a time; a dead one is replaced."""

    def __init__(self, workers: int, board: Board):
        self.board, self.ctx = board, get_context("spawn")
        gpus = visible_gpus()
        self.threads = max(1, cpu_count() // workers)
        self.gpus = [gpus[i % len(gpus)] if len(gpus) > 1 else None for i in range(workers)]
        self.workers = [self._start(i) for i in range(workers)]

    def _start(self, index: int) -> _Worker:
        here, there = self.ctx.Pipe()
        process = self.ctx.Process(target=_worker_main, name=f"nanolab-worker-{index}",
                                   args=(there, os.getpid(), self.gpus[index], self.threads))
        process.start()
        there.close()
        return _Worker(index, process, here)

    def run(self, next_task, on_end) -> bool:
        stopping, interrupted = False, False
        try:
            while True:
                for worker in self.workers:
                    if worker.task is None and not stopping:
                        task = next_task()
                        if task is None:
                            stopping = True
                            break
                        self.board.started(task)
                        worker.task = task
                        worker.conn.send(task)
                busy = [w for w in self.workers if w.task is not None]
                if not busy:
                    return not interrupted
                try:
                    ready = wait([x for w in busy for x in (w.conn, w.process.sentinel)])
                except KeyboardInterrupt:  # the workers got it too: their runs save and report interrupted
                    stopping = interrupted = True
                    continue
                for worker in busy:
                    if worker.conn in ready or worker.process.sentinel in ready:
                        stop = self._collect(worker, on_end)
                        stopping = stopping or stop
                        interrupted = interrupted or stop
        finally:
            self._close()

    def _collect(self, worker: _Worker, on_end) -> bool:
        """The outcome of the worker's task (or its death); returns whether the user interrupted it."""
        task, worker.task = worker.task, None
        try:
            outcome = worker.conn.recv()
        except (EOFError, OSError):  # it died without a word: kill -9, out of memory
            worker.process.join()
            outcome = self._dead(worker, task)
        self.board.ended(task, outcome)
        on_end(task, outcome)
        return outcome.status is RunStatus.INTERRUPTED

    def _dead(self, worker: _Worker, task: Task) -> Outcome:
        code = worker.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        reason = f"worker process {worker.process.pid} died ({how})"
        if task.folder is not None:
            RunFolder(task.folder).mark_failed(reason)
        self.workers[worker.index] = self._start(worker.index)  # same GPU and threads: no core idles
        return Outcome(RunStatus.FAILED, reason)

    def _close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.terminate()


def _watch_parent(parent: int) -> None:
    """Stop this worker like SIGTERM does (the run saves at the end of its step) once its parent is gone."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(conn: Connection, parent: int, gpu: str | None, threads: int) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # CUDA initialises lazily, at this process's first CUDA call
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # between runs; a run installs its own handler
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(execute(task, progress=False))
