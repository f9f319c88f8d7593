"""Trackers: the local run folder (always) and Weights & Biases (unless disabled).

The runner hands every metric, sample, checkpoint and summary to each tracker returned by `open_trackers`
and never imports wandb itself; this is the only module in nanolab that does, lazily, inside the W&B tracker,
so `tracking.wandb.mode: disabled` costs nothing.

W&B never stops a run: if it cannot start (no API key for online mode, no network, init timeout) or raises
while logging, one warning goes to stderr, the W&B tracker turns itself off and the run folder keeps everything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from nanolab.checkpoint import write_text
from nanolab.config import Config
from nanolab.errors import NanolabError
from nanolab.spec import to_dict

EXIT_CODES = {"finished": 0, "pruned": 0, "interrupted": 130, "diverged": 1, "failed": 1}  # for wandb finish()
LOSSES = ("train/loss", "train/eval_loss", "val/loss", "val/ppl", "val/bpc")  # W&B summary keeps min and last
SAMPLE_HEADER = re.compile(r"^--- step (\d+) ---$")
WANDB_INIT_TIMEOUT = 20.0  # seconds; wandb's default (90) is too long to wait for an unreachable server
MODES = ("online", "offline", "disabled")
MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}  # other values wandb accepts


def note(message: str) -> None:
    """One line on stderr, the way nanolab reports things that do not stop a run."""
    print(f"nanolab: {message}", file=sys.stderr, flush=True)


class Tracker:
    """Where a run's records go. Only `log` and `close` must be implemented; the rest default to no-ops."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_samples(self, step: int, text: str) -> None:
        """A generated sample, at each evaluation."""

    def log_checkpoint(self, path: Path, kind: str, step: int) -> None:
        """`kind` is "best" or "last"; called after the file is written."""

    def summary(self, values: dict) -> None:
        """Final and best figures (best/val_loss, best/val_ppl, best/step, wall_time, tokens_seen, ...)."""

    def close(self, status: str) -> None:
        raise NotImplementedError


def open_trackers(cfg: Config, run_dir: Path, meta: dict, resume_step: int | None) -> list[Tracker]:
    """The run folder tracker, then W&B unless its mode resolves to disabled.

    `meta` is updated in place (wandb_id, wandb_mode, wandb_dir, wandb_url); the runner writes it afterwards.
    `resume_step` is None for a fresh run, else the step of the checkpoint the run continues from.
    """
    run_dir = Path(run_dir)
    local = LocalTracker(run_dir, resume_step)
    trackers: list[Tracker] = [local]
    mode, auto_offline = resolve_mode(cfg)
    if mode != "disabled":
        wb = WandbTracker.open(cfg, run_dir, meta, resume_step, mode, auto_offline, local)
        if wb is not None:
            trackers.append(wb)
    return trackers


# ----------------------------------------------------------------------------- the run folder


def _number(value: Any) -> Any:
    """A metric value as a plain JSON number (tensors and numpy scalars included)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return float(value)


def _row_step(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None for a torn or foreign line."""
    if not line.endswith("\n"):
        return None  # the process died mid-write
    try:
        row = json.loads(line)
        return int(row["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_samples(path: Path) -> list[tuple[int, str]]:
    """samples.txt as [(step, text)]."""
    out: list[tuple[int, list[str]]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = SAMPLE_HEADER.match(line)
            if match:
                out.append((int(match.group(1)), []))
            elif out:
                out[-1][1].append(line)
    return [(step, "\n".join(lines)) for step, lines in out]


class LocalTracker(Tracker):
    """metrics.jsonl, samples.txt and summary.json in the run folder; always on.

    On resume, rows (and samples) past `resume_step` — written after the last checkpoint by a run that was
    then killed — are dropped first, so the history has no duplicate or out-of-order steps.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.txt"
        self.summary_path = self.run_dir / "summary.json"
        # what a resumed run keeps from earlier sessions, for the W&B tracker
        self.last_step_before_resume: int | None = None  # the highest step any earlier session logged
        self.kept_rows: list[dict] = []  # metrics.jsonl rows up to resume_step
        self.samples: list[tuple[int, str]] = []  # samples up to resume_step
        if resume_step is not None:
            self._truncate(resume_step)
        self._metrics = open(self.metrics_path, "a", encoding="utf-8", buffering=1)
        self._samples = None

    def _truncate(self, resume_step: int) -> None:
        if self.metrics_path.is_file():
            with open(self.metrics_path, encoding="utf-8", newline="") as f:
                lines = f.readlines()
            steps = [_row_step(line) for line in lines]
            seen = [s for s in steps if s is not None]
            self.last_step_before_resume = max(seen) if seen else None
            kept = [line for line, s in zip(lines, steps) if s is not None and s <= resume_step]
            self.kept_rows = [json.loads(line) for line in kept]
            if len(kept) != len(lines):
                write_text(self.metrics_path, "".join(kept))
        if self.samples_path.is_file():
            samples = read_samples(self.samples_path)
            self.samples = [(s, text) for s, text in samples if s <= resume_step]
            if len(self.samples) != len(samples):
                write_text(self.samples_path, "".join(_sample_block(s, t) for s, t in self.samples))

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")  # line-buffered: flushed at the newline

    def log_samples(self, step: int, text: str) -> None:
        if not text:  # train.sample_tokens: 0
            return
        if self._samples is None:
            self._samples = open(self.samples_path, "a", encoding="utf-8")
        self._samples.write(_sample_block(step, text))
        self._samples.flush()

    def summary(self, values: dict) -> None:
        data = {k: _number(v) for k, v in values.items()}
        write_text(self.summary_path, json.dumps(data, indent=2) + "\n")

    def close(self, status: str) -> None:
        for f in (self._metrics, self._samples):
            if f is not None and not f.closed:
                f.close()


def _sample_block(step: int, text: str) -> str:
    return f"--- step {step} ---\n{text}" + ("" if text.endswith("\n") else "\n")


# ----------------------------------------------------------------------------- Weights & Biases


def resolve_mode(cfg: Config) -> tuple[str, bool]:
    """(online | offline | disabled, whether `auto` chose offline). WANDB_MODE wins over the spec."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        mode = MODE_ALIASES.get(env, env)
        if mode not in MODES:
            raise NanolabError(f"WANDB_MODE={env!r}: expected one of: {', '.join(MODES)}")
        return mode, False
    mode = cfg.tracking.wandb.mode
    if mode == "auto":
        return ("online", False) if has_api_key() else ("offline", True)
    return mode, False


def _base_url() -> str:
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url
    from wandb.sdk import wandb_setup

    return wandb_setup.singleton().settings.base_url


def has_api_key() -> bool:
    """Whether W&B has credentials for its server (WANDB_API_KEY, netrc, settings, identity token), checked
    locally: no network, no prompt, no message, no file written."""
    try:
        from wandb.sdk.lib import wbauth

        auth = wbauth.authenticate_session(host=_base_url(), source="nanolab", prompt=False, update_session=False)
        return auth is not None
    except ImportError:
        pass
    except Exception:  # a malformed key or netrc: as good as none
        return False
    # wandb moved its internals: fall back to the documented sources
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _env_or(name: str, value: Any) -> Any:
    """W&B's own variables win over the spec."""
    return os.environ.get(name) or value


class WandbTracker(Tracker):
    """One W&B run: history at the training step, a samples table, optional checkpoint artifacts.

    History is logged with `step=` the training step, so every panel plots against it and a resumed run can
    rewind to its checkpoint (`resume_from=<id>?_step=<step>`, online where the server allows). Otherwise the
    run continues with the same id, from what W&B holds (online: the server's step; offline: the last step the
    earlier offline runs of this id saved, read back with `wandb leet inspect`): rows of metrics.jsonl it lacks
    are logged first, and this session's logs at steps it already holds (written after the checkpoint by the
    session that was killed) go to the run folder only, with one note, as W&B refuses steps that go backwards.
    """

    def __init__(self, run, *, log_checkpoints: bool = False, min_step: int = 0,
                 samples: list[tuple[int, str]] = ()):
        self.run = run
        self.log_checkpoints = log_checkpoints
        self.min_step = min_step  # logs below this step are already in W&B
        self.rows = [[step, text] for step, text in samples]
        self.active = True  # False after W&B failed: the run goes on with the local folder only
        self._warned = False
        self._noted_drop = False
        self._closed = False

    # -- opening

    @classmethod
    def open(cls, cfg: Config, run_dir: Path, meta: dict, resume_step: int | None, mode: str,
             auto_offline: bool = False, local: LocalTracker | None = None) -> WandbTracker | None:
        """Start the W&B run (updating `meta`), or warn once and return None if it cannot start.

        `local` is the run folder tracker, already truncated to `resume_step`: what the run recorded so far.
        """
        w = cfg.tracking.wandb
        if mode == "online" and not has_api_key():  # without a key wandb.init would prompt or fail
            note("W&B disabled for this run: online mode needs an API key (set WANDB_API_KEY or run "
                 "`wandb login`) and none was found; the run folder records everything "
                 "(with tracking.wandb.mode offline, `nanolab sync` uploads later)")
            return None
        try:
            import wandb
        except Exception as exc:  # noqa: BLE001 - a broken install must not stop training
            note(f"W&B disabled for this run: cannot import wandb ({_one_line(exc)}); the run folder records "
                 "everything")
            return None

        root = Path(_env_or("WANDB_DIR", w.dir) or run_dir)
        wandb_id = meta.get("wandb_id")
        resuming = resume_step is not None and bool(wandb_id)
        previous = {"mode": meta.get("wandb_mode"), "dir": meta.get("wandb_dir")}
        from wandb.sdk.lib.runid import generate_id

        wandb_id = wandb_id or generate_id()
        config = to_dict(cfg)
        config.update({k: meta[k] for k in ("params", "non_embedding_params", "flops_per_token", "device")
                       if k in meta})
        config["run_dir"] = str(run_dir)
        settings = {"silent": True}
        if "WANDB_INIT_TIMEOUT" not in os.environ:
            settings["init_timeout"] = WANDB_INIT_TIMEOUT
        kwargs = dict(project=_env_or("WANDB_PROJECT", w.project), entity=_env_or("WANDB_ENTITY", w.entity),
                      dir=str(root), id=wandb_id, name=meta.get("run_id") or run_dir.name,
                      group=cfg.tracking.group or meta.get("group"),
                      job_type=cfg.tracking.job_type or meta.get("job_type"),
                      tags=list(cfg.tracking.tags) or None, notes=cfg.tracking.notes, config=config,
                      reinit="create_new")

        def init(mode: str, **extra):
            root.mkdir(parents=True, exist_ok=True)
            return wandb.init(**kwargs, mode=mode, **extra, settings=wandb.Settings(**settings))

        def offline_held() -> int | None:  # read before this session adds its own offline run
            if not resuming:
                return None
            if previous["mode"] in (None, "offline"):
                roots = {root, *([Path(previous["dir"])] if previous["dir"] else [])}
                held = offline_last_step([d for r in roots for d in r.glob(f"wandb/offline-run-*-{wandb_id}")])
                if held is not False:
                    return held
            return local.last_step_before_resume if local else None  # can't look: assume W&B has it all

        run, error = None, None
        if resuming and mode == "online":
            try:  # rewind: W&B forgets what the killed session logged after the checkpoint
                run = init(mode, resume_from=f"{wandb_id}?_step={resume_step}")
            except Exception:  # noqa: BLE001 - the server does not allow rewinding: continue the run instead
                run = None
        held = offline_held() if mode == "offline" else None
        if run is None:
            try:
                run = init(mode, resume="allow" if resuming else None)
            except Exception as exc:  # noqa: BLE001
                error = exc
        if run is None and mode == "online" and w.mode == "auto" and not os.environ.get("WANDB_MODE"):
            try:  # auto, logged in, but the server is out of reach: offline, to sync later. wandb keeps the
                # failed run's id busy in this process: a new W&B run, which gets the whole history below
                kwargs["id"], resuming = generate_id(), False
                run, mode = init("offline"), "offline"
                note(f"W&B cannot reach its server ({_one_line(error)}): W&B runs offline; upload later with "
                     f"`nanolab sync {run_dir}`")
            except Exception as exc:  # noqa: BLE001
                error = exc
        if run is None:
            note(f"W&B disabled for this run: wandb.init failed ({_one_line(error)}); "
                 "the run folder records everything")
            return None
        if auto_offline:
            note(f"no W&B API key found: W&B runs offline; upload later with `nanolab sync {run_dir}`")

        if resuming and mode == "online":  # the server knows what it holds (after a rewind: up to resume_step)
            held = int(run.step) - 1 if run.step else None
        meta.update(wandb_id=run.id, wandb_mode=mode, wandb_dir=str(root), wandb_project=run.project)
        if mode == "online":
            meta["wandb_url"] = run.url
            note(f"W&B run: {run.url}")
        tracker = cls(run, log_checkpoints=w.log_checkpoints, min_step=0 if held is None else held + 1,
                      samples=local.samples if local else ())
        tracker._guard(tracker._define_metrics)
        if resume_step is not None and local:  # a W&B run new to a resumed run gets the whole history
            tracker._backfill(local.kept_rows)
        return tracker

    def _backfill(self, rows: list[dict]) -> None:
        """Log the run folder's rows that W&B lacks: a killed session's W&B data is not all saved, and a resumed
        run may start a new W&B run."""
        missing = [row for row in rows if row.get("step", -1) >= self.min_step]
        if not missing:
            return
        note(f"W&B run {self.run.id} lacked steps {missing[0]['step']}..{missing[-1]['step']} of this run (not "
             "saved by the interrupted session); logged them from metrics.jsonl")
        for row in missing:
            metrics = {k: v for k, v in row.items() if k != "step"}
            self._guard(self.run.log, metrics, step=int(row["step"]))

    def _define_metrics(self) -> None:
        for name in LOSSES:
            self.run.define_metric(name, summary="min,last")

    # -- failure isolation

    def _guard(self, fn, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop a run
            self.active = False
            self._warn(f"W&B failed ({_one_line(exc)}): W&B logging is off for the rest of this run; "
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
            self._guard(self.run.log, {k: _number(v) for k, v in metrics.items()}, step=int(step))

    def log_samples(self, step: int, text: str) -> None:
        if not text or not self._accepts(step):
            return

        def log_table():
            import wandb

            self.rows.append([int(step), text])
            self.run.log({"samples": wandb.Table(columns=["step", "text"], data=[list(r) for r in self.rows])},
                         step=int(step))

        self._guard(log_table)

    def log_checkpoint(self, path: Path, kind: str, step: int) -> None:
        if not self.log_checkpoints:
            return

        def log_artifact():
            import wandb

            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"step": step, "kind": kind})
            artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=[kind, f"step-{step}"])

        self._guard(log_artifact)

    def summary(self, values: dict) -> None:
        self._guard(self.run.summary.update, {k: _number(v) for k, v in values.items()})

    def close(self, status: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._guard(self.run.summary.update, {"status": status})
        self.active = False
        try:  # always, even after a failure: it flushes what was logged and ends the service's run
            self.run.finish(exit_code=EXIT_CODES.get(status, 1))
        except Exception as exc:  # noqa: BLE001
            self._warn(f"W&B failed to finish the run ({_one_line(exc)}); the run folder records everything")


def offline_last_step(run_dirs: list[Path]) -> int | None | bool:
    """The last history step the offline W&B runs in `run_dirs` saved (None: no history), read with W&B's own
    reader (`wandb leet inspect`); False if they cannot be read.

    W&B writes its offline .wandb file in blocks, so a session killed hard saved less than it logged.
    """
    last = None
    for d in run_dirs:
        try:
            done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(d)],
                                  capture_output=True, text=True, timeout=120, check=True)
            step = json.loads(done.stdout).get("step")
        except (OSError, ValueError, AttributeError, subprocess.SubprocessError):
            return False
        if isinstance(step, int) and (last is None or step > last):
            last = step
    return last


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"


# ----------------------------------------------------------------------------- nanolab sync


def find_offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run directories of a run folder, oldest first (a resumed run has one per session).

    Looks in `<run_dir>/wandb/` and, when the run used another W&B dir (WANDB_DIR, tracking.wandb.dir), for
    `offline-run-*-<wandb_id>` in the `wandb_dir` that meta.json names.
    """
    run_dir = Path(run_dir)
    found = set(run_dir.glob("wandb/offline-run-*"))
    meta_path = run_dir / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("wandb_dir") and meta.get("wandb_id"):
            found.update(Path(meta["wandb_dir"]).glob(f"wandb/offline-run-*-{meta['wandb_id']}"))
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.name)


def sync_runs(paths: list[Path]) -> None:
    """`nanolab sync RUN_FOLDER...`: upload the offline W&B runs of these run folders with `wandb sync`."""
    dirs: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise NanolabError(f"{path}: no such run folder")
        runs = find_offline_runs(path)
        if not runs:
            raise NanolabError(f"{path}: no offline W&B run in this folder (looked for wandb/offline-run-*); "
                               "only runs trained with W&B offline (tracking.wandb.mode offline, or auto without "
                               "an API key) need syncing")
        dirs.extend(runs)
    cmd = [sys.executable, "-m", "wandb", "sync", *map(str, dirs)]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise NanolabError(f"wandb sync failed (exit status {done.returncode}) for {len(dirs)} offline run(s); "
                           "check `wandb login` and the network, then run `nanolab sync` again")
