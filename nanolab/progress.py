"""Training progress: a rich progress bar on a terminal, plain log lines otherwise (CI, files, workers)."""

from __future__ import annotations

import os
import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


QUIET_ENV = "NANOLAB_QUIET"  # `nanolab -q` sets it: an environment variable, so that workers and Slurm jobs see it


def quiet() -> bool:
    """No progress output at all (bars, step lines, download and tokenizing lines): `nanolab ... -q`."""
    return os.environ.get(QUIET_ENV) == "1"


class Progress:
    """`update(step, loss, val_loss, tokens_per_sec, val_step)` after each log; a line every ~10% when not a TTY."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, stream=None):
        self.total, self.start, self.enabled = total, start, enabled and not quiet()
        self.stream = stream or sys.stderr
        self.bar = None
        self.next_line = start
        self.started = time.perf_counter()

    def __enter__(self):
        if self.enabled and self.stream.isatty():
            self.bar = RichProgress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, stats="")
        return self

    def update(self, step: int, loss: float, val_loss: float | None, tokens_per_sec: float,
               val_step: int | None = None) -> None:
        """`val_loss` is the latest evaluation's, made at `val_step` (shown when it is not this step)."""
        stats = f"loss {loss:.4f}" + (f" val {val_loss:.4f}" if val_loss is not None else "")
        stats += f" (step {val_step})" if val_loss is not None and val_step not in (None, step) else ""
        stats += f" {tokens_per_sec:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats)
        elif self.enabled and (step >= self.next_line or step == self.total):
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(1, step - self.start) * (self.total - step)
            print(f"step {step}/{self.total} {stats} eta {eta:.0f}s", file=self.stream, flush=True)
            self.next_line = step + max(1, self.total // 10)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
