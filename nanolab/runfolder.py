"""The run folder and the run store: every path, read and write of a run's files goes through here.

    runs/<name>/<run-id>/
      config.yaml  meta.json  metrics.jsonl  summary.json  samples.txt  tokenizer.json  ckpt/{last,best}.pt
      eval.jsonl   one line per `nanolab eval`: its tasks, checkpoint and lm-eval's figures

`RunFolder` owns one folder; `RunStore` owns a runs root: new folders, set-aside folders (`<run-id>.attemptN`,
never counted as runs of their group), listing, and marking a run whose process died as failed.

Files are written through `nanolab.files` (atomic whole files, line appends, the user's umask, one line on
failure); metrics.jsonl and samples.txt are appended a line at a time; `RunFolder.metrics()` is the one reader of the
former, and skips a torn last line (a process killed mid-write) and any line that is not a JSON row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from nanolab.errors import NanolabError
from nanolab import files
from nanolab.vocab import RunStatus

SAMPLE_HEADER = re.compile(r"^--- step (\d+) ---$")
VARIANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,59}\Z")  # a run id is <variant id>-s<seed>
SET_ASIDE = re.compile(r"\.(attempt\d+|old-\d{8}-\d{6})$")  # .old-*: the name sweeps gave before 0.2


def runs_root() -> Path:
    return Path(os.environ.get("NANOLAB_RUNS", "runs"))


def new_run_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def variant_ids(labels: dict[str, str]) -> dict[str, str]:
    """key -> a run-id stem for every variant (`labels`: the variant's key -> its readable label). A label that is
    a safe folder name, and no other variant's, is its own id; any other (a path, a long or odd value, two values
    that print alike) is `v-` and a short hash of the key, so that no value can name a folder outside the plan's."""
    counts: dict[str, int] = {}
    for text in labels.values():
        counts[text] = counts.get(text, 0) + 1

    def safe(text: str) -> bool:
        return bool(VARIANT_ID.match(text)) and ".." not in text and counts[text] == 1

    return {key: text if safe(text) else f"v-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
            for key, text in labels.items()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- one run folder


def parse_metrics(lines: Iterable[str]) -> list[dict]:
    """metrics.jsonl rows; a line without its newline (torn) or that is not a JSON object with a step is skipped."""
    rows = []
    for line in lines:
        if not line.endswith("\n"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _sample_block(step: int, text: str) -> str:
    return f"--- step {step} ---\n{text}" + ("" if text.endswith("\n") else "\n")


def plain(value: Any) -> Any:
    """A metric value as a plain JSON value (tensors and numpy scalars included), as every tracker records it."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return float(value)


class RunFolder:
    """One run's folder. Reading never raises for a missing optional file; writing is atomic per file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths
    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.txt"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.jsonl"

    def ckpt(self, kind: str) -> Path:
        """ckpt/last.pt or ckpt/best.pt."""
        return self.path / "ckpt" / f"{kind}.pt"

    def is_run(self) -> bool:
        return self.meta_path.is_file() and self.config_path.is_file()

    # -- config, meta, summary, tokenizer
    def write_config(self, text: str) -> None:
        files.write_text(self.config_path, text)

    def read_config(self) -> dict:
        """config.yaml as a nested dict (`nanolab.spec.load_spec(folder.config_path)` for a Config)."""
        from nanolab.spec import parse_yaml  # the one YAML reader: duplicate keys are errors everywhere

        try:
            data = parse_yaml(self.config_path.read_text(encoding="utf-8"), str(self.config_path))
        except OSError as exc:
            raise NanolabError(f"{self.config_path}: cannot read ({exc})") from None
        if not isinstance(data, dict):
            raise NanolabError(f"{self.config_path}: holds {type(data).__name__}, not a mapping")
        return data

    def read_meta(self) -> dict:
        return files.read_json(self.meta_path)

    def write_meta(self, meta: dict) -> None:
        files.write_json(self.meta_path, meta)

    def write_meta_in_place(self, meta: dict) -> None:
        """meta.json as compact JSON over its own blocks, when a full disk refused `write_meta`."""
        files.overwrite_in_place(self.meta_path, json.dumps(meta, separators=(",", ":"), default=str) + "\n")

    def update_meta(self, **fields: Any) -> dict:
        """Read meta.json, set `fields`, write it back; returns the new meta."""
        meta = {**self.read_meta(), **fields}
        self.write_meta(meta)
        return meta

    @property
    def status(self) -> RunStatus | None:
        """The status in meta.json; None when there is no readable meta.json or no known status."""
        try:
            value = self.read_meta().get("status")
        except NanolabError:
            return None
        return RunStatus(value) if value in RunStatus._value2member_map_ else None

    def read_summary(self) -> dict:
        return files.read_json(self.summary_path) if self.summary_path.is_file() else {}

    def write_summary(self, summary: dict) -> None:
        files.write_json(self.summary_path, {k: plain(v) for k, v in summary.items()})

    def read_tokenizer(self) -> dict:
        return files.read_json(self.tokenizer_path)

    def write_tokenizer(self, state: dict) -> None:
        files.write_json(self.tokenizer_path, state)

    # -- metrics and samples
    def metrics(self) -> list[dict]:
        """Every row of metrics.jsonl, in file order (see `parse_metrics` for what is skipped)."""
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, encoding="utf-8", newline="") as f:
            return parse_metrics(f)

    def open_metrics(self) -> files.AppendFile:
        """metrics.jsonl for appending a row at a time: each row is on disk when `write` returns."""
        self.path.mkdir(parents=True, exist_ok=True)
        return files.AppendFile(self.metrics_path)

    @staticmethod
    def metrics_line(metrics: dict, step: int) -> str:
        return json.dumps({"step": int(step), **{k: plain(v) for k, v in metrics.items()}}) + "\n"

    def samples(self) -> list[tuple[int, str]]:
        """samples.txt as [(step, text)]."""
        out: list[tuple[int, list[str]]] = []
        if self.samples_path.is_file():
            for line in self.samples_path.read_text(encoding="utf-8").splitlines():
                match = SAMPLE_HEADER.match(line)
                if match:
                    out.append((int(match.group(1)), []))
                elif out:
                    out[-1][1].append(line)
        return [(step, "\n".join(lines)) for step, lines in out]

    def append_eval(self, record: dict) -> None:
        """One `nanolab eval`'s record as a line of eval.jsonl."""
        with files.AppendFile(self.eval_path) as f:
            f.write(json.dumps(record) + "\n")

    def evals(self) -> list[dict]:
        """Every record of eval.jsonl, oldest first (a torn last line skipped)."""
        if not self.eval_path.is_file():
            return []
        lines = self.eval_path.read_text(encoding="utf-8").splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def append_sample(self, step: int, text: str) -> None:
        with files.AppendFile(self.samples_path) as f:
            f.write(_sample_block(step, text))

    def truncate(self, step: int) -> tuple[list[dict], int | None]:
        """Drop the metrics rows and samples past `step` (written after the checkpoint a resumed run starts
        from); returns (the rows kept, the highest step any earlier session logged)."""
        rows = self.metrics()
        logged = max((row["step"] for row in rows), default=None)
        kept = [row for row in rows if row["step"] <= step]
        if self.metrics_path.is_file():
            files.write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        samples = self.samples()
        if len(kept_samples := [(s, t) for s, t in samples if s <= step]) != len(samples):
            files.write_text(self.samples_path, "".join(_sample_block(s, t) for s, t in kept_samples))
        return kept, logged

    # -- checkpoints
    def save_checkpoint(self, kind: str, state: dict) -> Path:
        """A checkpoint holds only tensors and plain containers, so it loads with weights_only=True."""
        import torch

        path = self.ckpt(kind)
        with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
            try:
                torch.save(state, f)  # to a file object: a full disk raises the OSError, not only "unexpected pos"
            except RuntimeError as exc:  # ...which torch's zip writer then raises over it: the OSError is the truth
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise
        return path

    def load_checkpoint(self, kind: str, map_location: Any = "cpu") -> dict:
        import torch

        path = self.ckpt(kind)
        if not path.is_file():
            raise NanolabError(f"{path}: no checkpoint there")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # a truncated or foreign file; never retried with weights_only=False
            raise NanolabError(f"{path}: not a loadable nanolab checkpoint ({type(exc).__name__}: {exc})") from None

    def remove_partial_writes(self) -> list[Path]:
        return [*files.remove_partial_writes(self.path), *files.remove_partial_writes(self.path / "ckpt")]

    # -- status changes made from outside the run
    def mark_failed(self, reason: str) -> bool:
        """A run whose process died while `running` is failed, with the reason; returns whether it changed."""
        if self.status is not RunStatus.RUNNING:
            return False
        self.update_meta(status=RunStatus.FAILED, reason=reason, end_time=now())
        return True


# --------------------------------------------------------------------------- the runs root


def is_set_aside(path: str | os.PathLike) -> bool:
    """A folder renamed out of the way (`<run-id>.attemptN`): kept for inspection, never a run of its group."""
    return bool(SET_ASIDE.search(Path(path).name))


class RunStore:
    """Everything under a runs root (default `$NANOLAB_RUNS`, else ./runs):

        <root>/<name>/<run-id>/      the run folders of a spec or plan called <name>
        <root>/<name>/plan.json      an ablation's snapshot (nanolab.plan), beside its runs
        <root>/sweeps/<name>/        a sweep's plan.json, journal.log, trials.csv, best.yaml, table.txt
        <plan folder>/.slurm/        Slurm's job records and logs (.submitit/ for submitit's local executor)
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else runs_root()

    def group(self, name: str) -> Path:
        """The folder of the runs of a spec or plan called `name`."""
        return self.root / name

    def folder(self, name: str, run_id: str) -> RunFolder:
        return RunFolder(self.group(name) / run_id)

    def plan_folder(self, kind: str, name: str) -> Path:
        """An ablation's files live beside its runs; a sweep's in sweeps/<name> (its runs are trials)."""
        return self.root / "sweeps" / name if kind == "sweep" else self.group(name)

    @staticmethod
    def job_records(plan_folder: Path, cluster: str) -> Path:
        """Where a plan's Slurm jobs (cluster "slurm") or submitit-local jobs ("local") keep their records."""
        return plan_folder / (".slurm" if cluster == "slurm" else ".submitit")

    def journal(self, name: str) -> Path:
        """The default Optuna storage of a study: a journal file in its sweep folder."""
        return (self.plan_folder("sweep", name) / "journal.log").resolve()

    def new(self, name: str, run_id: str | None = None) -> RunFolder:
        """Create a new, empty run folder; an existing one is never overwritten."""
        folder = self.folder(name, run_id or new_run_id())
        try:
            folder.path.mkdir(parents=True)
        except FileExistsError:
            raise NanolabError(f"{folder.path}: run folder already exists; it is never overwritten") from None
        except OSError as exc:
            raise NanolabError(f"{folder.path}: cannot create the run folder ({exc.strerror})") from None
        return folder

    @staticmethod
    def set_aside(folder: RunFolder) -> RunFolder:
        """Rename a run that cannot continue to `<run-id>.attemptN` (the lowest free N), so its id starts anew."""
        n = 1
        while (target := folder.path.with_name(f"{folder.path.name}.attempt{n}")).exists():
            n += 1
        folder.path.rename(target)
        return RunFolder(target)

    @staticmethod
    def runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[RunFolder]:
        """The run folders (config.yaml + meta.json) under each path, itself included, recursively, without
        duplicates or set-aside folders, in path order."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        found: dict[Path, None] = {}
        for path in map(Path, paths):
            for meta in sorted(path.rglob("meta.json")):
                folder = meta.parent
                if (folder / "config.yaml").is_file() and not any(is_set_aside(p) for p in folder.relative_to(
                        path).parts):
                    found.setdefault(folder.resolve())
        return [RunFolder(p) for p in found]
