"""Opening a run's W&B run: the mode, the credentials, wandb.init with a short timeout, and its fallbacks.

W&B must never cost a run: no key, no network or a server that hangs gives one note, and the run folder goes on
alone. W&B's private modules, which move between releases, are touched in one function, with a fallback.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from nanolab.config import Config
from nanolab.config_dicts import to_dict
from nanolab.errors import NanolabError
from nanolab.runfolder import RunFolder
from nanolab.tracking import note, one_line
from nanolab.tracking.wandb import WandbTracker
from nanolab.tracking.wandb_resume import backfill, first_missing_step, offline_held, rewind

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


def env_or(name: str, value: Any) -> Any:
    """W&B's own variables win over the spec."""
    return os.environ.get(name) or value


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


def open_wandb(cfg: Config, folder: RunFolder, meta: Mapping, mode: str, auto_offline: bool,
               resume_step: int | None, logged: int | None) -> tuple[WandbTracker | None, dict]:
    """Start the W&B run, or note why not and return (None, {}). Returns the tracker and the wandb_* fields for
    meta.json. On resume (`resume_step`, the checkpoint's step), `folder` is already cut back to it, and `logged`
    is the highest step that earlier sessions logged."""
    wandb = _import_wandb(mode)
    if wandb is None:
        return None, {}
    w = cfg.tracking.wandb
    root = Path(env_or("WANDB_DIR", w.dir) or folder.path)
    wandb_id = meta.get("wandb_id") if resume_step is not None else None
    # what W&B holds of earlier offline sessions, read before this session adds its own
    held = offline_held(root, meta, logged) if wandb_id and mode == "offline" else None
    init = _initializer(wandb, cfg, folder, meta, root)
    run, mode, error = _start(init, cfg, folder, mode, wandb_id, resume_step)
    if run is None:
        note(f"W&B disabled for this run: wandb.init failed ({one_line(error)}); the run folder records everything")
        return None, {}
    if auto_offline:
        note(f"no W&B API key found: W&B runs offline; upload later with `nanolab sync {folder.path}`")
    fields = {"wandb_id": run.id, "wandb_mode": mode, "wandb_dir": str(root.absolute()), "wandb_project": run.project}
    if mode == "online":
        fields["wandb_url"] = run.url
        note(f"W&B run: {run.url}")
    tracker = WandbTracker(run, log_checkpoints=w.log_checkpoints,
                           min_step=first_missing_step(run, mode, wandb_id, held))
    if resume_step is not None:
        backfill(tracker, folder)
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
        note(f"W&B disabled for this run: cannot import wandb ({one_line(exc)}); the run folder records everything")
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
    kwargs = dict(project=env_or("WANDB_PROJECT", w.project), entity=env_or("WANDB_ENTITY", w.entity),
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
        run = rewind(init, wandb_id, resume_step)
    if run is None:
        try:
            run = init(mode, id=wandb_id, resume="allow" if wandb_id else None)
        except Exception as exc:  # noqa: BLE001
            error = exc
    if run is None and mode == "online" and cfg.tracking.wandb.mode == "auto" and not os.environ.get("WANDB_MODE"):
        try:  # a new id: wandb keeps the failed run's id busy in this process
            run, mode = init("offline"), "offline"
            note(f"W&B cannot reach its server ({one_line(error)}): W&B runs offline; upload later with "
                 f"`nanolab sync {folder.path}`")
        except Exception as exc:  # noqa: BLE001
            error = exc
    return run, mode, error
