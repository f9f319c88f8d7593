"""The run folder as a tracker: a thin adapter over RunFolder, which owns the files and the torn-line rule."""

from __future__ import annotations

import os

from nanolab.runfolder import RunFolder
from nanolab.tracking import Tracker


class LocalTracker(Tracker):
    """metrics.jsonl, samples.txt and summary.json; always on. A resumed run's folder is cut back to its
    checkpoint (`open_trackers`) before this appends to it."""

    def __init__(self, folder: RunFolder | os.PathLike):
        self.folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
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
