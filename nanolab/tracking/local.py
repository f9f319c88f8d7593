"""The run folder as a tracker: a thin adapter over RunFolder, which owns the files and the torn-line rule.

On resume it drops what a killed session wrote after the checkpoint, and keeps what the W&B tracker needs to
mend its own history (the kept rows and samples, the highest step earlier sessions logged) as plain attributes.
"""

from __future__ import annotations

import os

from nanolab.runfolder import RunFolder
from nanolab.tracking import Tracker


class LocalTracker(Tracker):
    """metrics.jsonl, samples.txt and summary.json; always on."""

    def __init__(self, folder: RunFolder | os.PathLike, resume_step: int | None = None):
        self.folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
        self.kept_rows: list[dict] = []  # metrics rows up to resume_step
        self.samples: list[tuple[int, str]] = []  # samples up to resume_step
        self.last_step_before_resume: int | None = None  # the highest step any earlier session logged
        if resume_step is not None:
            self.kept_rows, self.last_step_before_resume = self.folder.truncate(resume_step)
            self.samples = self.folder.samples()
        self._metrics = self.folder.open_metrics()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._metrics.write(RunFolder.metrics_line(metrics, step))  # line-buffered: on disk at the newline

    def log_samples(self, step: int, text: str) -> None:
        if text:  # train.sample_tokens: 0 gives none
            self.folder.append_sample(step, text)

    def summary(self, values: dict) -> None:
        self.folder.write_summary(values)

    def close(self, status: str) -> None:
        if not self._metrics.closed:
            self._metrics.close()
