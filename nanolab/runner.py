"""`run(cfg) -> RunResult`: the training loop that the CLI, the sweeps, the ablations and the tests all call.

Build (data, model, optimizer, run folder, trackers), loop (steps, logging, evaluation, checkpoints), close
(summary, meta.json, trackers) in try/finally. Checkpoints carry every RNG state, so a run stopped by a
signal and resumed with `run(cfg, resume_dir=...)` ends bit-identical to one that never stopped (CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from nanolab import device as dev
from nanolab import distributed
from nanolab.checkpoint import environment, load_checkpoint, read_json, save_checkpoint, write_json, write_text
from nanolab.components.optim import build_optimizer, lr_factor
from nanolab.config import Config
from nanolab.data import load_data
from nanolab.errors import NanolabError
from nanolab.model import build_model
from nanolab.progress import Progress
from nanolab.spec import dump_spec, to_dict
from nanolab.tracking import open_trackers

LN2 = math.log(2)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Stop(Exception):
    """Raised by an `on_eval` hook to end the run early with `status` (e.g. "pruned" by a sweep)."""

    def __init__(self, status: str, reason: str = ""):
        super().__init__(reason or status)
        self.status, self.reason = status, reason


class Diverged(Exception):
    pass


@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    status: str  # finished | interrupted | diverged | pruned | failed
    summary: dict
    config: Config
    exit_code: int = 0  # what the CLI exits with: 130/143 after a signal, 1 when diverged


@dataclass
class TrainState:
    """Everything the loop carries from step to step; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    wall_time: float = 0.0  # seconds of training over all sessions of this run
    accum: list = field(default_factory=lambda: [0.0, 0.0, 0])  # loss sum, grad-norm sum, steps since last log


def runs_root() -> Path:
    return Path(os.environ.get("NANOLAB_RUNS", "runs"))


def new_run_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SignalFlag:
    """SIGINT/SIGTERM only set a flag: the loop finishes its step, saves, and stops. A second signal is ignored."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
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

    Under torchrun every rank calls this; rank 0 alone writes the run folder, W&B and checkpoints.
    """
    world, device_name = distributed.init(cfg.train.device)
    try:
        distributed.check_batch(world, cfg.train.batch_size)
        return _run(cfg, world, dev.pick_device(device_name), run_id, resume_dir, on_eval, extra_meta, show_progress)
    finally:
        distributed.close()


def _run(cfg, world, device, run_id, resume_dir, on_eval, extra_meta, show_progress) -> RunResult:
    dev.configure(device)
    amp = dev.autocast_dtype(device, cfg.train.dtype)
    seed_everything(cfg.seed)
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.tokenizer.vocab_size).to(device)
    optimizer = build_optimizer(model, cfg.train, device.type)
    state = TrainState()
    gen = torch.Generator().manual_seed(cfg.seed)  # draws the (global) training batches

    if resume_dir is None:
        run_dir = world.broadcast(new_run_folder(cfg, run_id) if world.main else None)
        meta = {"run_id": run_dir.name, "name": cfg.name, "group": cfg.tracking.group,
                "job_type": cfg.tracking.job_type, "tags": list(cfg.tracking.tags), **(extra_meta or {}),
                "start_time": now(), "params": model.num_params(),
                "non_embedding_params": model.num_params(non_embedding=True),
                "flops_per_token": model.flops_per_token(), "dataset": data.description, "world_size": world.size}
        resume_step = None
    else:
        run_dir = Path(resume_dir)
        meta = read_json(run_dir / "meta.json")
        if meta.get("status") == "finished":
            raise NanolabError(f"{run_dir}: this run already finished; nothing to resume")
        if read_json(run_dir / "tokenizer.json") != data.tokenizer.to_dict():
            raise NanolabError(f"{run_dir}: the corpus's vocabulary differs from the one this run trained on")
        ckpt = load_checkpoint(run_dir / "ckpt" / "last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        restore_rng(ckpt["rng"], gen)
        resume_step = state.step
    run_id = meta["run_id"]
    trackers = []
    if world.main:
        if resume_dir is None:
            write_text(run_dir / "config.yaml", dump_spec(cfg))
            write_json(run_dir / "tokenizer.json", data.tokenizer.to_dict())
        meta.update(environment(device), status="running", resumed_at=now() if resume_dir else None)
        trackers = open_trackers(cfg, run_dir, meta, resume_step)
        write_json(run_dir / "meta.json", meta)

    trained = DistributedDataParallel(model) if world.distributed else model
    trained = torch.compile(trained) if cfg.train.compile else trained  # checkpoints save `model`: no _orig_mod.
    loop = Loop(cfg, model, trained, optimizer, data, gen, state, device, amp, run_dir, trackers, meta, on_eval, world)
    status, reason, exit_code = "failed", "", 1
    started = time.perf_counter()
    try:
        with SignalFlag() as flag, Progress(cfg.train.max_iters, state.step,
                                            enabled=show_progress and world.main) as bar:
            loop.train(flag, bar)
            if flag.signum:
                status, reason, exit_code = "interrupted", signal.Signals(flag.signum).name, EXIT_CODES[flag.signum]
            else:
                status, exit_code = "finished", 0
    except Stop as stop:
        status, reason, exit_code = stop.status, stop.reason, 0
    except Diverged as exc:
        status, reason = "diverged", str(exc)
        if world.main:
            print(f"nanolab: run {run_id} diverged: {exc}; the last good checkpoint is kept", file=sys.stderr)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        state.wall_time += time.perf_counter() - started
        summary = loop.summary()
        for tracker in trackers:
            try:
                tracker.summary(summary)
            finally:
                tracker.close(status)
        if world.main:
            meta.update(status=status, reason=reason, end_time=now(), wall_time=state.wall_time, steps=state.step)
            write_json(run_dir / "meta.json", meta)
    return RunResult(run_dir, run_id, status, summary, cfg, exit_code)


def new_run_folder(cfg: Config, run_id: str | None) -> Path:
    run_dir = runs_root() / cfg.name / (run_id or new_run_id())
    if run_dir.exists():
        raise NanolabError(f"{run_dir}: run folder already exists; it is never overwritten")
    run_dir.mkdir(parents=True)
    return run_dir


class Loop:
    """The training loop's state and steps; `train` runs from `state.step` to `max_iters`."""

    def __init__(self, cfg, model, trained, optimizer, data, gen, state, device, amp, run_dir, trackers, meta, on_eval,
                 world):
        self.cfg, self.t, self.world = cfg, cfg.train, world
        self.model, self.trained, self.optimizer, self.data, self.gen = model, trained, optimizer, data, gen
        self.state, self.device, self.amp, self.run_dir = state, device, amp, run_dir
        self.trackers, self.meta, self.on_eval = trackers, meta, on_eval
        self.tokens_per_step = self.t.batch_size * self.t.grad_accum * cfg.data.block_size
        self.last_eval: dict = {}

    def log(self, metrics: dict, step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def train(self, flag: SignalFlag, bar: Progress) -> None:
        state, t = self.state, self.t
        params = [p for p in self.model.parameters() if p.requires_grad]
        peak = dev.peak_flops(self.device) * self.world.size  # tokens/s count the global batch, over every rank
        clip = t.grad_clip if t.grad_clip > 0 else math.inf
        tick = time.perf_counter()
        stop = False
        while state.step < t.max_iters and not stop:
            factor = lr_factor(state.step, t)
            self.optimizer.set_lr_factor(factor)
            loss = torch.zeros((), device=self.device)
            for micro in range(t.grad_accum):
                x, y = self.batch("train", self.gen)
                sync = micro == t.grad_accum - 1 or not self.world.distributed  # DDP all-reduces on the last
                with contextlib.nullcontext() if sync else self.trained.no_sync(), dev.autocast(self.device, self.amp):
                    _, micro_loss = self.trained(x, y)
                    (micro_loss / t.grad_accum).backward()
                loss += micro_loss.detach() / t.grad_accum
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            # the one host sync of a step, one transfer: nothing bad reaches the weights
            loss_f, norm_f, mean_loss = torch.stack((loss, norm, self.world.mean(loss))).tolist()
            if not (math.isfinite(loss_f) and math.isfinite(norm_f)):
                raise Diverged(f"step {state.step + 1}: loss {loss_f}, grad norm {norm_f}")
            self.optimizer.step()
            self.optimizer.zero_grad()
            state.step += 1
            state.tokens_seen += self.tokens_per_step
            state.accum[0] += mean_loss
            state.accum[1] += norm_f
            state.accum[2] += 1
            last = state.step == t.max_iters
            if state.step % t.log_interval == 0 or last:
                elapsed = time.perf_counter() - tick
                logged = self.log_train(t.lr * factor, elapsed, peak)
                bar.update(state.step, logged["train/loss"], self.last_eval.get("val/loss"),
                           logged["perf/tokens_per_sec"])
                tick = time.perf_counter()
            if state.step % t.eval_interval == 0 or last:
                self.evaluate()
                tick = time.perf_counter()  # perf/* time training steps, not evaluations, samples or checkpoints
            stop = self.world.any(flag.signum is not None, self.device)  # every rank stops at the same step
            if state.step % t.save_interval == 0 or last or stop:
                self.save("last")
                tick = time.perf_counter()

    def log_train(self, lr: float, elapsed: float, peak: float) -> dict:
        loss_sum, norm_sum, n = self.state.accum
        tokens_per_sec = self.tokens_per_step * n / elapsed
        metrics = {"train/loss": loss_sum / n, "train/lr": lr, "train/grad_norm": norm_sum / n,
                   "perf/tokens_per_sec": tokens_per_sec, "perf/step_ms": 1000 * elapsed / n,
                   "perf/mfu": self.meta["flops_per_token"] * tokens_per_sec / peak}
        self.log(metrics, self.state.step)
        self.state.accum = [0.0, 0.0, 0]
        return metrics

    @torch.inference_mode()
    def estimate_loss(self, split: str) -> float:
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # the same eval batches at every evaluation
        losses = torch.zeros(self.t.eval_iters, device=self.device)  # on the device: no host sync per batch
        for i in range(self.t.eval_iters):
            x, y = self.batch(split, gen)
            with dev.autocast(self.device, self.amp):
                _, loss = self.trained(x, y)
            losses[i] = loss.float()
        return self.world.mean(losses.mean()).item()

    def evaluate(self) -> None:
        state = self.state
        self.model.eval()
        val, train = self.estimate_loss("val"), self.estimate_loss("train")
        metrics = {"val/loss": val, "val/ppl": math.exp(val), "val/bpc": val / LN2, "train/eval_loss": train}
        sample = self.sample()
        self.model.train()
        self.last_eval = metrics
        self.log(metrics, state.step)
        for tracker in self.trackers:
            tracker.log_samples(state.step, sample)
        if val < state.best_val_loss:
            state.best_val_loss, state.best_step = val, state.step
            self.save("best")
        if self.on_eval is not None:
            self.on_eval(state.step, metrics)

    def batch(self, split: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch that `gen` draws: (B / world, T) inputs and targets."""
        x, y = self.data.get_batch(split, self.t.batch_size, self.cfg.data.block_size, gen, self.device)
        return self.world.shard(x), self.world.shard(y)

    def sample(self) -> str:
        tok = self.data.tokenizer
        if self.t.sample_tokens == 0 or not self.world.main:
            return ""
        start = tok.encode("\n") or [0]
        idx = torch.tensor([start], dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + self.state.step)
        out = self.model.generate(idx, self.t.sample_tokens, temperature=1.0, top_k=None, generator=gen)
        return tok.decode(out[0].tolist())

    def save(self, kind: str) -> None:
        if not self.world.main:
            return
        path = self.run_dir / "ckpt" / f"{kind}.pt"
        save_checkpoint(path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "state": vars(self.state).copy(), "rng": rng_state(self.gen),
            "config": to_dict(self.cfg), "run_id": self.meta["run_id"], "wandb_id": self.meta.get("wandb_id"),
        })
        for tracker in self.trackers:
            tracker.log_checkpoint(path, kind, self.state.step)

    def summary(self) -> dict:
        s = self.state
        out = {"best/val_loss": s.best_val_loss, "best/val_ppl": math.exp(s.best_val_loss), "best/step": s.best_step,
               "tokens_seen": s.tokens_seen, "steps": s.step, "wall_time": s.wall_time}
        if self.last_eval:
            out.update({f"final/{k.replace('/', '_')}": v for k, v in self.last_eval.items()})
        return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isinf(v))}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "batches": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_config(run_dir: Path) -> Config:
    """The saved config of the run folder that `--resume` continues."""
    from nanolab.spec import load_spec

    if not (run_dir / "meta.json").is_file():
        raise NanolabError(f"{run_dir}: not a run folder (no meta.json)")
    return load_spec(run_dir / "config.yaml")


def load_trained(run_dir: Path, which: str = "best", device: str = "auto"):
    """(model in eval mode, tokenizer, device) from a run folder's checkpoint; no corpus needed."""
    from nanolab.data import tokenizer_from_dict

    cfg = resume_config(run_dir)
    target = dev.pick_device(device)
    path = run_dir / "ckpt" / f"{which}.pt"
    if which == "best" and not path.is_file():
        path = run_dir / "ckpt" / "last.pt"
    ckpt = load_checkpoint(path, map_location=target)
    tokenizer = tokenizer_from_dict(read_json(run_dir / "tokenizer.json"))
    model = build_model(cfg.model, tokenizer.vocab_size).to(target)
    model.load_state_dict(ckpt["model"])
    return model.eval(), tokenizer, target
