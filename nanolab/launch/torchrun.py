"""The torchrun backend: each task runs over N processes of one DDP world on this machine.

    nanolab run experiments/baseline.yaml --nproc 2     # one task: the run, over 2 ranks

The task is pickled to a temporary folder, and `python -m torch.distributed.run --standalone --nproc-per-node N
-m nanolab.launch.torchrun TASK OUTCOME` starts the ranks; each runs the task (nanolab.distributed joins them in
one process group) and rank 0 writes its outcome back. A rank that fails ends the others (torchrun's policy); a
task without an outcome failed with torchrun's exit status. Ctrl-C is passed to torchrun, which passes it to the
ranks: their run saves and reports `interrupted`.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nanolab.errors import NanolabError
from nanolab.launch import Launched, Launcher, Outcome
from nanolab.runfolder import RunFolder
from nanolab.vocab import EXIT_USAGE, RunStatus


class TorchrunLauncher(Launcher):
    def __init__(self, nproc: int):
        self.nproc = nproc

    def run(self, next_task, on_end, board) -> Launched:
        while (task := next_task()) is not None:
            board.started(task)
            outcome = self._run_one(task)
            board.ended(task, outcome)
            on_end(task, outcome)
            if outcome.status is RunStatus.INTERRUPTED:
                return Launched.INTERRUPTED
        return Launched.DONE

    def _run_one(self, task) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="nanolab-torchrun-") as tmp:
            task_file, outcome_file = Path(tmp) / "task.pkl", Path(tmp) / "outcome.pkl"
            task_file.write_bytes(pickle.dumps(task))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
                   "-m", "nanolab.launch.torchrun", str(task_file), str(outcome_file)]
            process = subprocess.Popen(cmd)
            while (code := _wait(process)) is None:
                process.send_signal(signal.SIGINT)  # torchrun passes it to the ranks, whose run saves and stops
            if outcome_file.is_file():
                return pickle.loads(outcome_file.read_bytes())
        reason = f"torchrun exited with status {code}"
        if task.folder is not None:
            RunFolder(task.folder).mark_failed(reason)
        return Outcome(RunStatus.FAILED, reason)


def _wait(process: subprocess.Popen) -> int | None:
    """The exit status, or None when Ctrl-C (or SIGTERM) interrupted the wait."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        return None


def main(task_file: str, outcome_file: str) -> int:
    """One rank: run the task, an error ending this rank (and so, through torchrun, the others); rank 0 writes
    the outcome."""
    task = pickle.loads(Path(task_file).read_bytes())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the run's own handler: its Ctrl-C is an outcome, not an exit
    try:
        outcome = task.fn(*task.args, progress=True)
    except NanolabError as exc:
        print(f"nanolab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if os.environ.get("RANK", "0") == "0":
        Path(outcome_file).write_bytes(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
