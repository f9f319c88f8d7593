"""`run(cfg) -> RunResult`: one training run, as the CLI, the sweeps, the ablations and the tests start it.

    check     the device exists, the dtype suits it, a training step fits in its memory, a resumed run's
              config.yaml matches its checkpoint: one line and nothing written when not
    build     data, model, optimizer, batch generator (seeded: the same on every rank and every session)
    prepare   a fresh run (a new run folder, config, tokenizer, meta) or a resumed one (its meta, its last
              checkpoint, leftovers of a killed write removed); then meta.json and the trackers
    loop      `nanolab.train_loop.Loop` with one `LoopContext`
    finish    summary and close to the trackers, status and times to meta.json (in a finally); a file that
              could not be written (disk full) fails the run with one line, and meta.json says so

Every file goes through `nanolab.runfolder`. Checkpoints carry every RNG state, so a run stopped by a signal
and resumed with `run(cfg, resume_dir=...)` ends bit-identical to one that never stopped (CPU).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from nanolab import device as dev
from nanolab import distributed
from nanolab.components.optim import build_optimizer
from nanolab.config import MAX_STEPS, Config
from nanolab.data import Data, load_data
from nanolab.distributed import World
from nanolab.environment import environment
from nanolab.errors import NanolabError, SpecError
from nanolab.model import build_model
from nanolab.progress import Progress
from nanolab.files import WriteFailed
from nanolab.runfolder import RunFolder, RunStore, now
from nanolab.spec import dump_spec
from nanolab.config_dicts import to_dict
from nanolab.tracking import open_trackers
from nanolab.train_loop import Diverged, Loop, LoopContext, TrainState, restore_rng, seed_everything
from nanolab.vocab import EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGUSR2, STATUS_EXIT, RunStatus

SIGNAL_EXIT = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM, signal.SIGUSR2: EXIT_SIGUSR2}


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
    """SIGINT/SIGTERM/SIGUSR2 only set a flag: the loop finishes its step, saves, and stops. A second signal is
    ignored."""

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

    @property
    def stops_caller(self) -> bool:
        """Ctrl-C in a caller that stops on KeyboardInterrupt (pytest, a notebook, a script): once the run has saved,
        the caller stops too, as it would have without the run's handler. The CLI, workers and ranks set their own."""
        return self.signum == signal.SIGINT and self.previous.get(signal.SIGINT) is signal.default_int_handler

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
    result = None
    try:
        distributed.check_batch(world, cfg.train.batch_size)
        device = dev.pick_device(device_name)
        amp = dev.autocast_dtype(device, cfg.train.dtype)  # refuses float16 on the CPU
        dev.configure(device)
        resumed = open_resumed(resume_dir, cfg, device) if resume_dir is not None else None  # before the data
        built = build(cfg, device, amp, world)
        cfg = with_budget(cfg, built.model.flops_per_token(), world.main)
        scaler = dev.grad_scaler(device, amp)
        if resumed is None:
            session = prepare_fresh(cfg, world, built, run_id, extra_meta)
        else:
            session = prepare_resumed(*resumed, world, built, scaler)
        trackers = start(cfg, world, device, session)
        trained = DistributedDataParallel(built.model) if world.distributed else built.model
        trained = torch.compile(trained) if cfg.train.compile else trained  # checkpoints save the model: no _orig_mod
        ctx = LoopContext(cfg, world, device, amp, built.data, built.model, trained, built.optimizer, built.gen,
                          session.state, session.folder, session.meta, trackers, on_eval, scaler)
        result = train(ctx, show_progress)
        return result
    finally:
        distributed.close(wait_for_all=result is not None)


# --------------------------------------------------------------------------- build


def build(cfg: Config, device: torch.device, amp: torch.dtype | None = None, world: World = World()) -> Built:
    """Data, model (on `device`), optimizer and batch generator, seeded from `cfg.seed`; a model whose training
    step would not fit in memory is refused first."""
    seed_everything(cfg.seed)
    data = load_data(cfg.data)
    check_memory(cfg, data.vocab_size, device, amp, world)
    model = build_model(cfg.model, vocab_size=data.vocab_size, block_size=cfg.data.block_size).to(device)
    optimizer = build_optimizer(model, cfg.train, device.type)
    return Built(data, model, optimizer, torch.Generator().manual_seed(cfg.seed))


def with_budget(cfg: Config, flops_per_token: int, main: bool = True) -> Config:
    """`cfg` with max_iters set to the steps that train.max_tokens or train.max_flops allow (if one is set); the
    max_iters it replaces is named in one line, not dropped silently (`main`: this rank says it)."""
    steps = cfg.train.budget_steps(cfg.tokens_per_step, flops_per_token)
    if steps > MAX_STEPS:  # max_tokens is bounded by the config already; max_flops needs the model's FLOPs
        raise SpecError(f"train.max_flops = {cfg.train.max_flops:g}: {steps:,} steps of {cfg.tokens_per_step:,} "
                        f"tokens x {flops_per_token:,} FLOPs; at most {MAX_STEPS:,} steps")
    if steps == cfg.train.max_iters:
        return cfg
    if main:
        budget = "max_tokens" if cfg.train.max_tokens is not None else "max_flops"
        print(f"nanolab: train.{budget} = {getattr(cfg.train, budget):,} sets {steps:,} steps; train.max_iters = "
              f"{cfg.train.max_iters:,} is not used", file=sys.stderr, flush=True)
    return replace(cfg, train=replace(cfg.train, max_iters=steps))


def check_memory(cfg: Config, vocab_size: int, device: torch.device, amp: torch.dtype | None, world: World) -> None:
    """Refuse, before the first step, a model whose training step would not fit in `device`'s free memory (a
    step that swaps or fails in the allocator minutes later, deaf to signals meanwhile). The estimate is
    `GPT.train_step_bytes`: eager mode, measured on the CPU; torch.compile needs less."""
    with torch.device("meta"):  # shapes only: no memory taken, no random numbers drawn
        model = build_model(cfg.model, vocab_size=vocab_size, block_size=cfg.data.block_size)
    batch, block = cfg.train.batch_size // world.size, cfg.data.block_size
    activations, weights = model.train_step_bytes(batch, amp is not None, device.type)
    need = activations + weights * (1.25 if world.distributed else 1)  # DDP's gradient buckets
    need *= 1 if device.type == "cuda" else world.size  # the ranks of one host share its memory
    free, source = dev.available_memory(device)
    if need > free:
        raise NanolabError(
            f"data.block_size = {block}, train.batch_size = {cfg.train.batch_size}: a training step needs "
            f"~{size(need)} ({size(activations)} of activations for {batch} x {block} tokens, {size(weights)} of "
            f"weights, gradients and optimizer state) but {device.type} has {size(free)} of {source}; lower "
            f"data.block_size or train.batch_size (train.grad_accum keeps the tokens per step), or set "
            f"model.checkpoint_activations: true")


def size(n: float) -> str:
    """Bytes in binary units: 41.8 GiB."""
    unit, shift = next(((u, s) for u, s in (("TiB", 40), ("GiB", 30), ("MiB", 20)) if n >= 2**s), ("KiB", 10))
    return f"{n / 2**shift:.1f} {unit}"


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
        try:
            folder.write_config(dump_spec(cfg))
            folder.write_tokenizer(built.data.tokenizer.to_dict())
        except WriteFailed:
            shutil.rmtree(folder.path, ignore_errors=True)  # a run that never started leaves nothing behind
            raise
    return Session(folder, meta, TrainState(), None)


def open_resumed(resume_dir: str | Path, cfg: Config, device: torch.device) -> tuple[RunFolder, dict, dict]:
    """The run folder to continue, its meta and its last checkpoint; refuses a run that already finished and a
    config whose model differs from the checkpoint's (naming the keys)."""
    folder = RunFolder(resume_dir)
    meta = folder.read_meta()
    if meta.get("status") == RunStatus.FINISHED:
        raise NanolabError(f"{folder.path}: this run already finished; nothing to resume")
    ckpt = folder.load_checkpoint("last", map_location=device)
    if differences := shape_differences(ckpt.get("config"), cfg):
        raise NanolabError(f"{folder.path}: config.yaml no longer matches the run's checkpoint: "
                           f"{'; '.join(differences)}; put those values back to resume it")
    return folder, meta, ckpt


def shape_differences(saved: dict | None, cfg: Config) -> list[str]:
    """`key: checkpoint A, config.yaml B` for each model key (and data.block_size) that differs."""
    if not saved:  # a checkpoint without its config: load_state_dict says what does not fit
        return []
    current = to_dict(cfg)
    pairs = [(f"model.{k}", saved.get("model", {}).get(k), current["model"].get(k))
             for k in sorted({*saved.get("model", {}), *current["model"]})]
    pairs.append(("data.block_size", saved.get("data", {}).get("block_size"), current["data"]["block_size"]))
    return [f"{key}: checkpoint {a}, config.yaml {b}" for key, a, b in pairs if a != b]


def prepare_resumed(folder: RunFolder, meta: dict, ckpt: dict, world: World, built: Built, scaler) -> Session:
    """Load the last checkpoint into `built` (weights, optimizer, RNG states, float16's loss scale) and the
    loop's state."""
    if folder.read_tokenizer() != built.data.tokenizer.to_dict():
        raise NanolabError(f"{folder.path}: the corpus's vocabulary differs from the one this run trained on")
    try:
        built.model.load_state_dict(ckpt["model"])
        built.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:  # first line only: torch lists every tensor
        raise NanolabError(f"{folder.ckpt('last')}: does not fit the model config.yaml describes "
                           f"({str(exc).strip().splitlines()[0]})") from None
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    if world.main:
        folder.remove_partial_writes()  # a write that a kill -9 cut short leaves its temporary file
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
    try:
        trackers, wandb_meta = open_trackers(cfg, session.folder, MappingProxyType(meta), session.resume_step)
        meta.update(wandb_meta)
        session.folder.write_meta(meta)
    except WriteFailed:
        if session.resume_step is None:
            shutil.rmtree(session.folder.path, ignore_errors=True)  # a run that never started leaves nothing
        raise
    return trackers


# --------------------------------------------------------------------------- loop and finish


def train(ctx: LoopContext, show_progress: bool) -> RunResult:
    """The loop, then `finish` whatever happened; how the run ended decides the status and the exit code."""
    loop = Loop(ctx)
    status, reason, exit_code = RunStatus.FAILED, "", EXIT_FAILED
    try:
        with SignalFlag() as flag, Progress(ctx.cfg.train.max_iters, ctx.state.step,
                                            enabled=show_progress and ctx.world.main) as bar:
            loop.train(flag, bar)
            if flag.signum:
                status, reason = RunStatus.INTERRUPTED, signal.Signals(flag.signum).name
                exit_code = SIGNAL_EXIT[flag.signum]
                say(ctx, f"interrupted by {reason}; continue it with: {resume_command(ctx)}")
            else:
                status, exit_code = RunStatus.FINISHED, STATUS_EXIT[RunStatus.FINISHED]
    except Stop as stop:
        status, reason, exit_code = stop.status, stop.reason, STATUS_EXIT[stop.status]
    except Diverged as exc:
        status, reason, exit_code = RunStatus.DIVERGED, str(exc), STATUS_EXIT[RunStatus.DIVERGED]
        say(ctx, f"diverged: {exc}; {kept(ctx, loop)}")
    except WriteFailed as exc:  # disk full: the run stops here, its last checkpoint whole
        status, reason, exit_code = RunStatus.FAILED, exc.relative_to(ctx.folder.path), EXIT_FAILED
        say(ctx, f"failed: {reason}; {kept(ctx, loop)}; with space again: {resume_command(ctx)}")
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ctx.state.wall_time += time.perf_counter() - loop.started
        summary = loop.summary()
        status, reason, exit_code = finish(ctx, summary, status, reason, exit_code, loop)
    if status is RunStatus.INTERRUPTED and flag.stops_caller:
        raise KeyboardInterrupt(f"run {ctx.meta['run_id']} saved; continue it with: {resume_command(ctx)}")
    return RunResult(ctx.folder.path, ctx.meta["run_id"], status, summary, ctx.cfg, exit_code, reason)


def say(ctx: LoopContext, text: str) -> None:
    """One line on stderr about how the run ended (rank 0 only)."""
    if ctx.world.main:
        print(f"nanolab: run {ctx.meta['run_id']} {text}", file=sys.stderr, flush=True)


def resume_command(ctx: LoopContext) -> str:
    return f"nanolab run --resume {shlex.quote(str(ctx.folder.path))}"


def kept(ctx: LoopContext, loop: Loop) -> str:
    """Which checkpoint a run that stopped on a fault keeps: ckpt/last.pt and its step, or none."""
    if loop.saved_step is None:
        return "no checkpoint is kept: none was saved before"
    return f"the last good checkpoint is kept: {ctx.folder.ckpt('last')} (step {loop.saved_step})"


def finish(ctx: LoopContext, summary: dict, status: RunStatus, reason: str, exit_code: int,
           loop: Loop) -> tuple[RunStatus, str, int]:
    """The summary to each tracker and each tracker closed, then status, reason and times into meta.json;
    returns the final (status, reason, exit code). A run whose summary could not be written (disk full) is
    failed, not finished. Every tracker is closed and meta.json is written even when a tracker raises; then
    its error (other than a failed write) is raised."""
    errors = []
    for tracker in ctx.trackers:
        for call in (lambda: tracker.summary(summary), lambda: tracker.close(status)):
            try:
                call()
            except Exception as exc:
                errors.append(exc)
    failed = next((exc for exc in errors if isinstance(exc, WriteFailed)), None)
    if failed is not None and status in (RunStatus.FINISHED, RunStatus.PRUNED):
        status, reason, exit_code = RunStatus.FAILED, failed.relative_to(ctx.folder.path), EXIT_FAILED
        say(ctx, f"failed: {reason}; {kept(ctx, loop)}; with space again: {resume_command(ctx)}")
    if ctx.world.main:
        ctx.meta.update(status=status, reason=reason, end_time=now(), wall_time=ctx.state.wall_time,
                        steps=ctx.state.step)
        record_meta(ctx)
    if others := [exc for exc in errors if not isinstance(exc, WriteFailed)]:
        raise others[0]
    return status, reason, exit_code


def record_meta(ctx: LoopContext) -> None:
    """meta.json with the run's final status: atomically, else (disk full) compactly over the old file's own
    blocks, else a line on stderr saying that meta.json could not be updated."""
    try:
        ctx.folder.write_meta(ctx.meta)
    except WriteFailed:
        try:
            ctx.folder.write_meta_in_place(ctx.meta)
        except WriteFailed as exc:
            print(f"nanolab: error: could not record status {ctx.meta['status']} in meta.json "
                  f"({exc.relative_to(ctx.folder.path)}); it still says {RunStatus.RUNNING}", file=sys.stderr)


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
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # torch lists every mismatch over many lines; the first says enough
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise NanolabError(f"{folder.ckpt(which)} does not fit {folder.config_path} (edited since the run?): "
                           f"{detail[:300]}") from None
    return model.eval(), tokenizer, target
