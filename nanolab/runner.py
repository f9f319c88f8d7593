"""`run(cfg) -> RunResult`: one training run, as the CLI, the sweeps, the ablations and the tests start it.

    build     data, model, optimizer, batch generator (seeded: the same on every rank and every session)
    prepare   a fresh run (a new run folder, config, tokenizer, meta) or a resumed one (its meta, its last
              checkpoint, leftovers of a killed write removed); then meta.json and the trackers
    loop      `nanolab.train_loop.Loop` with one `LoopContext`
    finish    summary and close to the trackers, status and times to meta.json (in a finally)

Every file goes through `nanolab.runfolder`. Checkpoints carry every RNG state, so a run stopped by a signal
and resumed with `run(cfg, resume_dir=...)` ends bit-identical to one that never stopped (CPU).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from nanolab import device as dev
from nanolab import distributed
from nanolab.components.optim import build_optimizer
from nanolab.config import Config
from nanolab.data import Data, load_data
from nanolab.distributed import World
from nanolab.environment import environment
from nanolab.errors import NanolabError
from nanolab.model import build_model
from nanolab.progress import Progress
from nanolab.runfolder import RunFolder, RunStore, now
from nanolab.spec import dump_spec
from nanolab.tracking import open_trackers
from nanolab.train_loop import Diverged, Loop, LoopContext, TrainState, restore_rng, seed_everything
from nanolab.vocab import EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM, STATUS_EXIT, RunStatus

SIGNAL_EXIT = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}


class Stop(Exception):
    """Raised by an `on_eval` hook to end the run early with `status` (e.g. "pruned" by a sweep)."""

    def __init__(self, status: str | RunStatus, reason: str = ""):
        super().__init__(reason or str(status))
        self.status, self.reason = RunStatus(status), reason


@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    status: RunStatus  # a str: finished | interrupted | diverged | pruned | failed
    summary: dict
    config: Config
    exit_code: int = 0  # what the CLI exits with: 130/143 after a signal, 1 when diverged
    reason: str = ""  # why it ended so (the signal, the divergence, the pruner's words); "" when it finished

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)


@dataclass
class Built:
    data: Data
    model: torch.nn.Module
    optimizer: object
    gen: torch.Generator  # draws the (global) training batches


@dataclass
class Session:
    folder: RunFolder
    meta: dict
    state: TrainState
    resume_step: int | None  # None for a fresh run


class SignalFlag:
    """SIGINT/SIGTERM only set a flag: the loop finishes its step, saves, and stops. A second signal is ignored."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_EXIT:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def run(cfg: Config, *, run_id: str | None = None, resume_dir: str | Path | None = None,
        on_eval: Callable[[int, dict], None] | None = None, extra_meta: dict | None = None,
        show_progress: bool = True) -> RunResult:
    """Train `cfg` in a new run folder (or continue the one at `resume_dir`); return where it went and how.

    `on_eval(step, metrics)` is called after each evaluation and may raise `Stop`. Under torchrun every rank
    calls this; rank 0 alone writes the run folder, W&B and checkpoints.
    """
    world, device_name = distributed.init(cfg.train.device)
    try:
        distributed.check_batch(world, cfg.train.batch_size)
        device = dev.pick_device(device_name)
        dev.configure(device)
        resumed = open_resumed(resume_dir) if resume_dir is not None else None  # its checks before the data
        built = build(cfg, device)
        if resumed is None:
            session = prepare_fresh(cfg, world, built, run_id, extra_meta)
        else:
            session = prepare_resumed(*resumed, world, device, built)
        trackers = start(cfg, world, device, session)
        trained = DistributedDataParallel(built.model) if world.distributed else built.model
        trained = torch.compile(trained) if cfg.train.compile else trained  # checkpoints save the model: no _orig_mod
        ctx = LoopContext(cfg, world, device, dev.autocast_dtype(device, cfg.train.dtype), built.data, built.model,
                          trained, built.optimizer, built.gen, session.state, session.folder, session.meta, trackers,
                          on_eval)
        return train(ctx, show_progress)
    finally:
        distributed.close()


# --------------------------------------------------------------------------- build


def build(cfg: Config, device: torch.device) -> Built:
    """Data, model (on `device`), optimizer and batch generator, seeded from `cfg.seed`."""
    seed_everything(cfg.seed)
    data = load_data(cfg.data)
    model = build_model(cfg.model, vocab_size=data.vocab_size, block_size=cfg.data.block_size).to(device)
    optimizer = build_optimizer(model, cfg.train, device.type)
    return Built(data, model, optimizer, torch.Generator().manual_seed(cfg.seed))


# --------------------------------------------------------------------------- prepare


def prepare_fresh(cfg: Config, world: World, built: Built, run_id: str | None, extra_meta: dict | None) -> Session:
    """A new run folder (rank 0 creates it) holding the config and the tokenizer; the run's first meta."""
    folder = world.broadcast(RunStore().new(cfg.name, run_id) if world.main else None)
    model = built.model
    meta = {"run_id": folder.run_id, "name": cfg.name, "group": cfg.tracking.group,
            "job_type": cfg.tracking.job_type, "tags": list(cfg.tracking.tags), **(extra_meta or {}),
            "start_time": now(), "params": model.num_params(), "non_embedding_params": model.num_params(True),
            "flops_per_token": model.flops_per_token(), "dataset": built.data.description, "world_size": world.size}
    if world.main:
        folder.write_config(dump_spec(cfg))
        folder.write_tokenizer(built.data.tokenizer.to_dict())
    return Session(folder, meta, TrainState(), None)


def open_resumed(resume_dir: str | Path) -> tuple[RunFolder, dict]:
    """The run folder to continue and its meta; refuses a run that already finished."""
    folder = RunFolder(resume_dir)
    meta = folder.read_meta()
    if meta.get("status") == RunStatus.FINISHED:
        raise NanolabError(f"{folder.path}: this run already finished; nothing to resume")
    return folder, meta


def prepare_resumed(folder: RunFolder, meta: dict, world: World, device: torch.device, built: Built) -> Session:
    """Load the last checkpoint into `built` (weights, optimizer, RNG states) and the loop's state."""
    if folder.read_tokenizer() != built.data.tokenizer.to_dict():
        raise NanolabError(f"{folder.path}: the corpus's vocabulary differs from the one this run trained on")
    if world.main:
        folder.remove_partial_writes()  # a write that a kill -9 cut short leaves its temporary file
    ckpt = folder.load_checkpoint("last", map_location=device)
    built.model.load_state_dict(ckpt["model"])
    built.optimizer.load_state_dict(ckpt["optimizer"])
    state = TrainState.from_dict(ckpt["state"])
    restore_rng(ckpt["rng"], built.gen)
    return Session(folder, meta, state, state.step)


def start(cfg: Config, world: World, device: torch.device, session: Session) -> list:
    """Rank 0: the environment and status `running` into meta, the trackers opened, meta.json written."""
    if not world.main:
        return []
    meta = session.meta
    meta.update(environment(device), status=RunStatus.RUNNING,
                resumed_at=None if session.resume_step is None else now())
    trackers, wandb_meta = open_trackers(cfg, session.folder, MappingProxyType(meta), session.resume_step)
    meta.update(wandb_meta)
    session.folder.write_meta(meta)
    return trackers


# --------------------------------------------------------------------------- loop and finish


def train(ctx: LoopContext, show_progress: bool) -> RunResult:
    """The loop, then `finish` whatever happened; how the run ended decides the status and the exit code."""
    loop = Loop(ctx)
    status, reason, exit_code = RunStatus.FAILED, "", EXIT_FAILED
    started = time.perf_counter()
    try:
        with SignalFlag() as flag, Progress(ctx.cfg.train.max_iters, ctx.state.step,
                                            enabled=show_progress and ctx.world.main) as bar:
            loop.train(flag, bar)
            if flag.signum:
                status, reason = RunStatus.INTERRUPTED, signal.Signals(flag.signum).name
                exit_code = SIGNAL_EXIT[flag.signum]
            else:
                status, exit_code = RunStatus.FINISHED, STATUS_EXIT[RunStatus.FINISHED]
    except Stop as stop:
        status, reason, exit_code = stop.status, stop.reason, STATUS_EXIT[stop.status]
    except Diverged as exc:
        status, reason, exit_code = RunStatus.DIVERGED, str(exc), STATUS_EXIT[RunStatus.DIVERGED]
        if ctx.world.main:
            print(f"nanolab: run {ctx.meta['run_id']} diverged: {exc}; the last good checkpoint is kept",
                  file=sys.stderr)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ctx.state.wall_time += time.perf_counter() - started
        summary = loop.summary()
        finish(ctx, summary, status, reason)
    return RunResult(ctx.folder.path, ctx.meta["run_id"], status, summary, ctx.cfg, exit_code, reason)


def finish(ctx: LoopContext, summary: dict, status: RunStatus, reason: str) -> None:
    """The summary to each tracker and each tracker closed, then status, reason and times into meta.json.

    Every tracker is closed and meta.json is written even when a tracker raises; then its error is raised."""
    errors = []
    for tracker in ctx.trackers:
        try:
            tracker.summary(summary)
        except Exception as exc:
            errors.append(exc)
        try:
            tracker.close(status)
        except Exception as exc:
            errors.append(exc)
    if ctx.world.main:
        ctx.meta.update(status=status, reason=reason, end_time=now(), wall_time=ctx.state.wall_time,
                        steps=ctx.state.step)
        ctx.folder.write_meta(ctx.meta)
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- a finished run folder


def resume_config(run_dir: str | Path) -> Config:
    """The saved config of the run folder that `--resume` continues."""
    from nanolab.spec import load_spec

    folder = RunFolder(run_dir)
    if not folder.meta_path.is_file():
        raise NanolabError(f"{folder.path}: not a run folder (no meta.json)")
    return load_spec(folder.config_path)


def load_trained(run_dir: str | Path, which: str = "best", device: str = "auto"):
    """(model in eval mode, tokenizer, device) from a run folder's checkpoint; no corpus needed."""
    from nanolab.data import tokenizer_from_dict

    folder = RunFolder(run_dir)
    cfg = resume_config(folder.path)
    target = dev.pick_device(device)
    if which == "best" and not folder.ckpt("best").is_file():
        which = "last"
    ckpt = folder.load_checkpoint(which, map_location=target)
    tokenizer = tokenizer_from_dict(folder.read_tokenizer())
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, block_size=cfg.data.block_size).to(target)
    model.load_state_dict(ckpt["model"])
    return model.eval(), tokenizer, target
