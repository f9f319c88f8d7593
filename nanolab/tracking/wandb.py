"""Weights & Biases as a tracker: log and close, like torchtitan's logger, plus samples, checkpoints, summary.

The rest exists for two reasons. W&B must never cost a run: no key, no network or a server that hangs gives
one note, and the run folder goes on alone. And a resumed run must reach W&B with every step once and in
order, although W&B refuses steps that go backwards and a hard-killed session saved only part of what it
logged. W&B's private modules, which move between releases, are touched in one function, with a fallback.
"""

from __future__ import annotations

import json
import netrc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from nanolab.config import Config
from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder, plain
from nanolab.config import to_dict
from nanolab.tracking import Tracker, note
from nanolab.tracking.local import LocalTracker
from nanolab.tracking.sync import offline_run_dirs
from nanolab.vocab import EXIT_FAILED, LOSSES, STATUS_EXIT, RunStatus

WANDB_INIT_TIMEOUT = 20.0  # seconds; wandb's default (90) is too long to wait for an unreachable server
MODES = ("online", "offline", "disabled")
MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}  # other values wandb accepts
META_IN_CONFIG = ("params", "non_embedding_params", "flops_per_token", "device")


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


# ----------------------------------------------------------------------------- W&B's private modules: only here


def _wandb_private_has_key(host: str | None) -> bool | None:
    """W&B's own credential lookup (API key, netrc, settings, identity token) without network, prompt, message
    or file written; None when this wandb no longer has it, and the caller falls back to public sources."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        host = host or wandb_setup.singleton().settings.base_url
        authenticate = wbauth.authenticate_session
    except (ImportError, AttributeError):
        return None
    try:
        return authenticate(host=host, source="nanolab", prompt=False, update_session=False) is not None
    except TypeError:  # its signature changed
        return None
    except Exception:  # noqa: BLE001 - a malformed key or netrc: as good as none
        return False


# -----------------------------------------------------------------------------


def has_api_key() -> bool:
    """Whether W&B has credentials for its server, checked locally."""
    found = _wandb_private_has_key(os.environ.get("WANDB_BASE_URL"))
    if found is not None:
        return found
    if os.environ.get("WANDB_API_KEY"):  # the documented sources
        return True
    try:
        host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_config(cfg: Config, folder: RunFolder, meta: Mapping) -> dict:
    """The W&B run's config: the resolved config nested, the model's figures, the run id and folder, and what
    a sweep trial or ablation cell is (its trial and swept keys; its ablation and variant)."""
    config = to_dict(cfg)
    config.update({k: meta[k] for k in META_IN_CONFIG if k in meta})
    config["run_id"] = meta.get("run_id") or folder.run_id
    config["run_dir"] = str(folder.path)
    if "sweep" in meta:
        config.update(sweep=meta["sweep"], trial=meta.get("trial"), swept_keys=list(meta.get("trial_params") or ()))
    if "ablation" in meta:
        config.update(ablation=meta["ablation"], variant=meta.get("variant"))
    return config


def open_wandb(cfg: Config, folder: RunFolder, meta: Mapping, resume_step: int | None, mode: str,
               auto_offline: bool, local: LocalTracker) -> tuple[WandbTracker | None, dict]:
    """Start the W&B run, or note why not and return (None, {}). Returns the tracker and the wandb_* fields for
    meta.json. `local` is the run folder tracker, already truncated to `resume_step`."""
    wandb = _import_wandb(mode)
    if wandb is None:
        return None, {}
    w = cfg.tracking.wandb
    root = Path(_env_or("WANDB_DIR", w.dir) or folder.path)
    wandb_id = meta.get("wandb_id") if resume_step is not None else None
    # what W&B holds of earlier offline sessions, read before this session adds its own
    held = _offline_held(root, meta, local) if wandb_id and mode == "offline" else None
    init = _initializer(wandb, cfg, folder, meta, root)
    run, mode, error = _start(init, cfg, folder, mode, wandb_id, resume_step)
    if run is None:
        note(f"W&B disabled for this run: wandb.init failed ({_one_line(error)}); the run folder records everything")
        return None, {}
    if auto_offline:
        note(f"no W&B API key found: W&B runs offline; upload later with `nanolab sync {folder.path}`")
    if run.id != wandb_id:  # a W&B run new to this run: it gets the whole history
        held = None
    elif mode == "online":  # the server knows what it holds (after a rewind: up to resume_step)
        held = int(run.step) - 1 if run.step else None
    fields = {"wandb_id": run.id, "wandb_mode": mode, "wandb_dir": str(root.absolute()), "wandb_project": run.project}
    if mode == "online":
        fields["wandb_url"] = run.url
        note(f"W&B run: {run.url}")
    tracker = WandbTracker(run, log_checkpoints=w.log_checkpoints, min_step=0 if held is None else held + 1)
    tracker._guard(tracker._define_metrics)
    if resume_step is not None:
        tracker.backfill(local.kept_rows, local.samples)
    return tracker, fields


def _import_wandb(mode: str) -> Any:
    """The wandb module, or None with a note: online without a key would prompt or fail, a broken install too."""
    if mode == "online" and not has_api_key():
        note("W&B disabled for this run: online mode needs an API key (set WANDB_API_KEY or run `wandb login`) "
             "and none was found; the run folder records everything (with tracking.wandb.mode offline, "
             "`nanolab sync` uploads later)")
        return None
    try:
        import wandb
    except Exception as exc:  # noqa: BLE001 - a broken install must not stop training
        note(f"W&B disabled for this run: cannot import wandb ({_one_line(exc)}); the run folder records everything")
        return None
    return wandb


def _initializer(wandb: Any, cfg: Config, folder: RunFolder, meta: Mapping, root: Path) -> Callable[..., Any]:
    """`init(mode, **extra)`: wandb.init with this run's placement, names and config, silent, with a short
    init timeout unless WANDB_INIT_TIMEOUT says otherwise."""
    t, w = cfg.tracking, cfg.tracking.wandb
    run_id = meta.get("run_id") or folder.run_id
    settings: dict[str, Any] = {"silent": True}
    if "WANDB_INIT_TIMEOUT" not in os.environ:
        settings["init_timeout"] = WANDB_INIT_TIMEOUT
    kwargs = dict(project=_env_or("WANDB_PROJECT", w.project), entity=_env_or("WANDB_ENTITY", w.entity),
                  dir=str(root), name=f"{meta.get('name') or cfg.name}/{run_id}",  # run ids repeat across sweeps
                  group=t.group or meta.get("group"), job_type=t.job_type or meta.get("job_type"),
                  tags=list(t.tags) or None, notes=t.notes, config=wandb_config(cfg, folder, meta),
                  reinit="create_new")

    def init(mode: str, **extra: Any) -> Any:
        root.mkdir(parents=True, exist_ok=True)
        return wandb.init(**kwargs, mode=mode, **extra, settings=wandb.Settings(**settings))

    return init


def _start(init: Callable[..., Any], cfg: Config, folder: RunFolder, mode: str, wandb_id: str | None,
           resume_step: int | None) -> tuple[Any, str, BaseException | None]:
    """(run or None, mode, the error): rewind or continue the W&B run `wandb_id` (None: a new one); in auto
    mode, logged in but out of reach, a new offline run to sync later."""
    run, error = None, None
    if wandb_id and mode == "online":
        try:  # rewind: W&B forgets what the killed session logged after the checkpoint
            run = init(mode, id=wandb_id, resume_from=f"{wandb_id}?_step={resume_step}")
        except Exception:  # noqa: BLE001 - the server does not allow rewinding: continue the run instead
            run = None
    if run is None:
        try:
            run = init(mode, id=wandb_id, resume="allow" if wandb_id else None)
        except Exception as exc:  # noqa: BLE001
            error = exc
    if run is None and mode == "online" and cfg.tracking.wandb.mode == "auto" and not os.environ.get("WANDB_MODE"):
        try:  # a new id: wandb keeps the failed run's id busy in this process
            run, mode = init("offline"), "offline"
            note(f"W&B cannot reach its server ({_one_line(error)}): W&B runs offline; upload later with "
                 f"`nanolab sync {folder.path}`")
        except Exception as exc:  # noqa: BLE001
            error = exc
    return run, mode, error


def _offline_held(root: Path, meta: Mapping, local: LocalTracker) -> int | None:
    """The last step the earlier offline sessions of W&B run meta['wandb_id'] saved; when they cannot be read
    (or were online), assume W&B holds all that earlier sessions logged."""
    if meta.get("wandb_mode") in (None, "offline"):
        roots = {p.resolve() for p in (root, *([Path(meta["wandb_dir"])] if meta.get("wandb_dir") else []))}
        held = offline_last_step([d for r in roots for d in offline_run_dirs(r, meta["wandb_id"])])
        if held is not False:
            return held
    return local.last_step_before_resume


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


class WandbTracker(Tracker):
    """One W&B run: history at the training step, each evaluation's sample once, optional checkpoint artifacts.

    Logs below `min_step` (steps W&B already holds from a session killed after its checkpoint, when the run
    could not be rewound) go to the run folder only, with one note: W&B refuses steps that go backwards.
    After the first failure W&B is off for the rest of the run, with one warning.
    """

    def __init__(self, run: Any, *, log_checkpoints: bool = False, min_step: int = 0):
        self.run = run
        self.log_checkpoints = log_checkpoints
        self.min_step = min_step
        self.active = True  # False after W&B failed: the run goes on with the local folder only
        self._warned = self._noted_drop = self._closed = False

    def backfill(self, rows: list[dict], samples: list[tuple[int, str]]) -> None:
        """Log the run folder's rows and samples that W&B lacks, in step order: a killed session's W&B data is
        not all saved, and a resumed run may start a new W&B run."""
        missing = [(row["step"], 0, {k: v for k, v in row.items() if k != "step"}) for row in rows
                   if row["step"] >= self.min_step]
        missing += [(step, 1, text) for step, text in samples if step >= self.min_step and text]
        if not missing:
            return
        missing.sort(key=lambda record: record[:2])  # at a step, the metrics before the sample
        note(f"W&B run {self.run.id} lacked steps {missing[0][0]}..{missing[-1][0]} of this run (not saved by the "
             "interrupted session); logged them from metrics.jsonl")
        for step, kind, payload in missing:
            if kind == 0:
                self._guard(self.run.log, payload, step=step)
            else:
                self._guard(self._log_sample, step, payload)

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
            self._warn(f"W&B failed to finish the run ({_one_line(exc)}); the run folder records everything")


def _exit_code(status: str) -> int:
    try:
        return STATUS_EXIT[RunStatus(status)]
    except (ValueError, KeyError):
        return EXIT_FAILED


def _plain(values: Mapping) -> dict:
    return {k: plain(v) for k, v in values.items()}


def _env_or(name: str, value: Any) -> Any:
    """W&B's own variables win over the spec."""
    return os.environ.get(name) or value


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}".strip() if exc is not None else ""
    return text.splitlines()[0][:300] if text else "unknown error"
