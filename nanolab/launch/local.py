"""The local backend: the tasks of a plan over N worker processes on this machine.

- one worker runs its tasks in this process (the run's progress bar shows its step); N > 1 workers are
  processes, each with cores / N torch threads and, where several GPUs are visible, one GPU of its own;
- a task that raises is recorded as failed and the others go on;
- a worker that dies (kill -9, out of memory) is replaced by a new one with the same GPU and threads, its run
  folder is marked failed with the reason, and the front-end decides whether to retry the task;
- workers never outlive the command: each watches its parent and stops (as after SIGTERM: the step ends, the
  run saves and is `interrupted`) when the parent is gone;
- Ctrl-C or SIGTERM stops starting tasks and is passed on to the workers: their runs end the step, save and
  report `interrupted`, and `run` returns INTERRUPTED once every worker has reported.
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
from typing import Any

from nanolab.launch import Board, Launched, Launcher, Outcome, Task, execute
from nanolab.runfolder import RunFolder
from nanolab.vocab import RunStatus

PARENT_POLL_SECONDS = 1.0


class LocalLauncher(Launcher):
    def __init__(self, workers: int = 1):
        self.workers = workers

    def run(self, next_task, on_end, board) -> Launched:
        if self.workers <= 1:
            return self._run_here(next_task, on_end, board)
        return _Pool(self.workers, board).run(next_task, on_end)

    @staticmethod
    def _run_here(next_task, on_end, board) -> Launched:
        try:
            while (task := next_task()) is not None:
                board.started(task)
                outcome = execute(task, progress=True)
                board.ended(task, outcome)
                on_end(task, outcome)
                if outcome.status is RunStatus.INTERRUPTED:
                    return Launched.INTERRUPTED
        except KeyboardInterrupt:  # between runs (SIGTERM too: see nanolab.cli); a run turns it into `interrupted`
            return Launched.INTERRUPTED
        return Launched.DONE


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

    def run(self, next_task, on_end) -> Launched:
        stopping = interrupted = False
        try:
            while True:
                try:
                    for worker in self.workers:
                        if worker.task is None and not stopping:
                            if (task := next_task()) is None:
                                stopping = True
                                break
                            self.board.started(task)
                            worker.task = task
                            worker.conn.send(task)
                    busy = [w for w in self.workers if w.task is not None]
                    if not busy:
                        return Launched.INTERRUPTED if interrupted else Launched.DONE
                    ready = wait([x for w in busy for x in (w.conn, w.process.sentinel)])
                    for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                        stop = self._collect(worker, on_end)
                        stopping, interrupted = stopping or stop, interrupted or stop
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM, passed on; a second one (a terminal's) is ignored
                    stopping = interrupted = True
                    for worker in self.workers:
                        if worker.task is not None:
                            os.kill(worker.process.pid, signal.SIGINT)  # the run saves and reports interrupted
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
