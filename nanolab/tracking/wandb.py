"""Weights & Biases as a tracker: one W&B run behind `log` and `close`, like torchtitan's logger, plus each
evaluation's sample, checkpoint artifacts and the summary.

W&B never stops a run: its first failure turns it off for the rest of the run with one note, and the run folder
goes on alone. Opening the run is wandb_open.py's job; what a resumed run's W&B run already holds, wandb_resume.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from nanolab.runfolder import plain
from nanolab.tracking import Tracker, note, one_line
from nanolab.vocab import EXIT_FAILED, LOSSES, STATUS_EXIT, RunStatus


class WandbTracker(Tracker):
    """One W&B run: history at the training step, each evaluation's sample once, optional checkpoint artifacts.

    Logs below `min_step` (steps W&B already holds from a session killed after its checkpoint, when the run
    could not be rewound) go to the run folder only, with one note: W&B refuses steps that go backwards.
    """

    def __init__(self, run: Any, *, log_checkpoints: bool = False, min_step: int = 0):
        self.run = run
        self.log_checkpoints = log_checkpoints
        self.min_step = min_step
        self.active = True  # False after W&B failed: the run goes on with the local folder only
        self._warned = self._noted_drop = self._closed = False
        self._guard(self._define_metrics)

    def _define_metrics(self) -> None:
        for name in LOSSES:
            self.run.define_metric(name, summary="min,last")

    # -- failure isolation

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop a run
            self.active = False
            self._warn(f"W&B failed ({one_line(exc)}): W&B logging is off for the rest of this run; "
                       "the run folder records everything")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            note(message)

    def _accepts(self, step: int) -> bool:
        if step >= self.min_step:
            return True
        if not self._noted_drop:
            self._noted_drop = True
            note(f"W&B run {self.run.id} already holds steps up to {self.min_step - 1} from the session that was "
                 f"interrupted; this session's logs up to that step go to metrics.jsonl only")
        return False

    # -- the interface

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._accepts(step):
            self._guard(self.run.log, _plain(metrics), step=int(step))

    def log_samples(self, step: int, text: str) -> None:
        if text and self._accepts(step):
            self._guard(self._log_sample, int(step), text)

    def _log_sample(self, step: int, text: str) -> None:
        """This evaluation's sample alone, a one-row table at its step: each sample is uploaded once."""
        import wandb

        self.run.log({"samples": wandb.Table(columns=["step", "text"], data=[[step, text]])}, step=step)

    def log_checkpoint(self, path: Path, kind: str, step: int) -> None:
        if self.log_checkpoints:
            self._guard(self._log_artifact, Path(path), kind, step)

    def _log_artifact(self, path: Path, kind: str, step: int) -> None:
        import wandb

        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"step": step, "kind": kind})
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact, aliases=[kind, f"step-{step}"])

    def summary(self, values: dict) -> None:
        self._guard(self.run.summary.update, _plain(values))

    def close(self, status: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard(self.run.summary.update, {"status": str(status)})
        self.active = False
        try:  # always, even after a failure: it flushes what was logged and ends the service's run
            self.run.finish(exit_code=_exit_code(status))
        except Exception as exc:  # noqa: BLE001
            self._warn(f"W&B failed to finish the run ({one_line(exc)}); the run folder records everything")


def _exit_code(status: str) -> int:
    try:
        return STATUS_EXIT[RunStatus(status)]
    except (ValueError, KeyError):
        return EXIT_FAILED


def _plain(values: Mapping) -> dict:
    return {k: plain(v) for k, v in values.items()}
