"""The training loop: `train_step` (one optimizer step) and `Loop` (steps, logging, evaluation, checkpoints).

    result = train_step(model, optimizer, lambda: data.get_batch("train", 12, 64, gen), grad_clip=1.0)
    Loop(ctx).train(flag, bar)          # from ctx.state.step to train.max_iters

`nanolab.runner` prepares a run, builds a `LoopContext` and finishes the run; this module trains. Checkpoints
carry the `TrainState` and every RNG state, so a resumed run continues bit-identically (CPU).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from nanolab import device as dev
from nanolab import vocab as v
from nanolab.components.optim import lr_factor
from nanolab.config import Config
from nanolab.distributed import World
from nanolab.runfolder import RunFolder
from nanolab.config_dicts import to_dict

LN2 = math.log(2)
MAX_OVERFLOWS = 20  # float16 steps in a row whose gradients overflowed even at a halved loss scale: diverged


class Diverged(Exception):
    """A NaN or infinite loss or gradient norm (without a loss scaler): the step is not applied."""


@dataclass
class TrainState:
    """Everything the loop carries from step to step; saved in every checkpoint as `vars(state)`."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    wall_time: float = 0.0  # seconds of training over all sessions of this run
    train_time: float = 0.0  # of which in training steps alone: no evaluation, sample or checkpoint
    # sums over the steps since the last train/* log, so that train/loss is their mean, also across a resume
    loss_sum: float = 0.0
    grad_norm_sum: float = 0.0
    steps_since_log: int = 0
    skipped_since_log: int = 0  # float16 steps skipped for overflowed gradients: no grad norm to average
    skipped_steps: int = 0  # all of them, over every session
    overflows_in_a_row: int = 0
    last_eval: dict = field(default_factory=dict)  # the latest evaluation: the summary's final/* after a resume
    last_eval_step: int = -1

    @classmethod
    def from_dict(cls, saved: Mapping) -> TrainState:
        """The state a checkpoint saved; also from checkpoints before 0.3, whose `accum` was a list."""
        saved = dict(saved)
        if "accum" in saved:
            saved["loss_sum"], saved["grad_norm_sum"], saved["steps_since_log"] = saved.pop("accum")
        known = {f.name for f in fields(cls)}
        return cls(**{k: value for k, value in saved.items() if k in known})

    def add(self, result: StepResult, tokens: int) -> None:
        """Count one optimizer step (a skipped one too: the schedule and the data move on, as in AMP recipes)."""
        self.step += 1
        self.tokens_seen += tokens
        self.loss_sum += result.mean_loss
        self.steps_since_log += 1
        self.overflows_in_a_row = self.overflows_in_a_row + 1 if result.skipped else 0
        if result.skipped:
            self.skipped_since_log += 1
            self.skipped_steps += 1
        else:
            self.grad_norm_sum += result.grad_norm

    def reset_window(self) -> None:
        self.loss_sum, self.grad_norm_sum, self.steps_since_log, self.skipped_since_log = 0.0, 0.0, 0, 0


@dataclass(frozen=True)
class StepResult:
    loss: float  # this rank's loss, the mean over the micro-batches
    mean_loss: float  # the same, averaged over the ranks
    grad_norm: float  # before clipping, unscaled
    skipped: bool = False  # float16: the gradients overflowed at this loss scale; the weights did not change


def train_step(model: torch.nn.Module, optimizer, next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], *,
               lr_factor: float = 1.0, grad_accum: int = 1, grad_clip: float = 0.0, params: list | None = None,
               amp: torch.dtype | None = None, world: World = World(), step: int = 0,
               scaler: torch.amp.GradScaler | None = None) -> StepResult:
    """One optimizer step: `grad_accum` micro-batches from `next_batch()` (forward, backward), the gradient
    clipped to `grad_clip` (0: not clipped), then the step's one host sync, which checks the loss and the norm:
    a NaN or inf raises `Diverged` (naming `step`) before anything reaches the weights. Else the optimizer
    (a `nanolab.components.optim.Optimizers`) steps at `lr_factor` times its peak rate and zeroes the gradients.

    With a `scaler` (float16) the loss is scaled before backward and the gradients unscaled before clipping,
    so the norm is the true pre-clip one; a non-finite norm is then an overflow of the scale, not divergence:
    the step is skipped (`skipped`) and the scaler halves its scale, as `GradScaler.step` does.

    `model` is what runs forward (the module, or its DDP / compiled wrapper); `params` (default: the trainable
    parameters of `model`) are clipped. Under DDP the gradients are all-reduced on the last micro-batch only.
    """
    optimizer.set_lr_factor(lr_factor)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    loss = None
    for micro in range(grad_accum):
        x, y = next_batch()
        sync = micro == grad_accum - 1 or not world.distributed
        with contextlib.nullcontext() if sync else model.no_sync(), dev.autocast(x.device, amp):
            _, micro_loss = model(x, y)
            part = micro_loss / grad_accum
            (part if scaler is None else scaler.scale(part)).backward()
        part = part.detach()
        loss = part if loss is None else loss + part
    if scaler is not None:
        scaler.unscale_(optimizer)  # the norm, its clipping and its log see the true gradients
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    # the one host sync of a step, one transfer: nothing bad reaches the weights
    loss_f, norm_f, mean_loss = torch.stack((loss, norm, world.mean(loss))).tolist()
    if not math.isfinite(loss_f) or (scaler is None and not math.isfinite(norm_f)):
        raise Diverged(f"step {step}: loss {loss_f}, grad norm {norm_f}")
    skipped = not math.isfinite(norm_f)  # only with a scaler: the identical check on every rank (reduced grads)
    if not skipped:
        optimizer.step()
    if scaler is not None:
        scaler.update()  # halves the scale after an overflow, doubles it after 2000 steps without one
    optimizer.zero_grad()
    return StepResult(loss_f, mean_loss, norm_f, skipped)


@torch.inference_mode()
def whole_split_loss(model: torch.nn.Module, tokens: np.ndarray, block_size: int, batch_size: int,
                     world: World = World(), device: torch.device | str = "cpu",
                     amp: torch.dtype | None = None) -> float:
    """The mean loss per token over a whole split (val/loss_whole). The inputs are cut into non-overlapping
    windows tokens[iT:(i+1)T], each one's targets the next T tokens, so that every token but the split's first
    is predicted exactly once, from the context of its own window only (the first target of a window sees one
    token, the last sees T). The last window is padded after its end, where a causal model's padding changes no
    prediction, and its padded targets are left out.

    The windows go in batches of `batch_size`, rank r taking batches r, r + world size, ...; the ranks' loss sums
    and target counts are then added, so every token weighs alike whatever each rank's share. `model` is the plain
    module: a DDP wrapper could reach for collectives that ranks with fewer batches would never join.
    """
    T, n = block_size, len(tokens) - 1  # n targets
    windows = math.ceil(n / T)
    padded = np.full(windows * T + 1, -1, dtype=np.int64)  # -1: no target (cross_entropy's ignore_index)
    padded[: n + 1] = tokens
    x, y = np.maximum(padded[:-1], 0).reshape(windows, T), padded[1:].reshape(windows, T)  # (windows, T) each
    loss_sum, count = 0.0, 0
    for start in range(world.rank * batch_size, windows, world.size * batch_size):
        xb, yb = (torch.from_numpy(a[start:start + batch_size]).to(device) for a in (x, y))  # (B, T) each
        with dev.autocast(device, amp):
            logits = model(xb)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), ignore_index=-1, reduction="sum")
        loss_sum, count = loss_sum + loss.item(), count + int((yb >= 0).sum())  # a host sum in float64
    if world.distributed:  # the mean over the ranks of (sum, count): their ratio is that of the totals
        loss_sum, count = world.mean(torch.tensor([loss_sum, count], dtype=torch.float64, device=device)).tolist()
    return loss_sum / count


@dataclass
class LoopContext:
    """What the loop works with: the run's config, where it runs, what it trains, where it records."""

    cfg: Config
    world: World
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype, None for fp32
    data: object  # nanolab.data.Data
    model: torch.nn.Module  # the GPT: checkpoints, evaluation samples
    trained: torch.nn.Module  # what runs forward: the model, or its DDP / compiled wrapper
    optimizer: object  # nanolab.components.optim.Optimizers
    gen: torch.Generator  # draws the (global) training batches
    state: TrainState
    folder: RunFolder
    meta: dict  # run_id, wandb_id, flops_per_token, ...
    trackers: list = field(default_factory=list)
    on_eval: Callable[[int, dict], None] | None = None
    scaler: torch.amp.GradScaler | None = None  # float16's loss scaler; its state is in every checkpoint


class Loop:
    """The training loop of one session of a run; `train` runs from `ctx.state.step` to `max_iters`."""

    def __init__(self, ctx: LoopContext):
        self.ctx, self.t = ctx, ctx.cfg.train
        self.tokens_per_step = ctx.cfg.tokens_per_step
        self.saved_step: int | None = ctx.state.step or None  # ckpt/last.pt's step (a resumed run starts at it)
        self.started = time.perf_counter()  # this session's start: state.wall_time holds the earlier sessions

    def log(self, metrics: dict, step: int) -> None:
        """To every tracker, with the cumulative counters that `compare --at` reads."""
        state = self.ctx.state
        counters = {v.TOKENS: state.tokens_seen, v.FLOPS: state.tokens_seen * self.ctx.meta["flops_per_token"],
                    v.WALL: state.wall_time + time.perf_counter() - self.started}
        for tracker in self.ctx.trackers:
            tracker.log({**metrics, **counters}, step)

    def train(self, flag, bar) -> None:
        """Steps until max_iters, or until `flag.signum` is set on some rank (then saves and returns)."""
        ctx, state, t = self.ctx, self.ctx.state, self.t
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        peak = dev.peak_flops(ctx.device) * ctx.world.size  # tokens/s count the global batch, over every rank
        tick, stop = time.perf_counter(), False
        while state.step < t.max_iters and not stop:
            factor, started = lr_factor(state.step, t), time.perf_counter()
            result = train_step(ctx.trained, ctx.optimizer, lambda: self.batch("train", ctx.gen), lr_factor=factor,
                                grad_accum=t.grad_accum, grad_clip=t.grad_clip, params=params, amp=ctx.amp,
                                world=ctx.world, step=state.step + 1, scaler=ctx.scaler)
            if state.overflows_in_a_row + result.skipped > MAX_OVERFLOWS:
                raise Diverged(f"step {state.step + 1}: the float16 gradients overflowed in {MAX_OVERFLOWS + 1} "
                               f"steps in a row (loss scale now {ctx.scaler.get_scale():g})")
            state.add(result, self.tokens_per_step)
            state.train_time += time.perf_counter() - started
            last, logged = state.step == t.max_iters, None
            if state.step % t.log_interval == 0 or last:
                logged = self.log_train(time.perf_counter() - tick, peak)
                tick = time.perf_counter()
            if state.step % t.eval_interval == 0 or last:
                # the whole-val pass ends the run's last step only: a session that a signal stops earlier never
                # gets there, and its resumed session does (a signal during the last step is too late to skip it:
                # the resumed run would have no step left to end with one)
                self.evaluate(whole_val=last and t.final_eval)
                tick = time.perf_counter()  # perf/* time training steps, not evaluations, samples or checkpoints
            if logged is not None:  # after this step's evaluation: the bar shows the latest one, at its step
                bar.update(state.step, logged[v.TRAIN_LOSS], state.last_eval.get(v.VAL_LOSS),
                           logged[v.TOKENS_PER_SEC], state.last_eval_step)
            stop = ctx.world.any(flag.signum is not None, ctx.device)  # every rank stops at the same step
            if state.step % t.save_interval == 0 or last or stop:
                self.save("last")
                tick = time.perf_counter()

    def log_train(self, elapsed: float, peak: float) -> dict:
        state, optimizer = self.ctx.state, self.ctx.optimizer
        n, applied = state.steps_since_log, state.steps_since_log - state.skipped_since_log
        tokens_per_sec = self.tokens_per_step * n / elapsed
        metrics = {v.TRAIN_LOSS: state.loss_sum / n, v.TRAIN_LR: optimizer.lr(), v.TOKENS_PER_SEC: tokens_per_sec,
                   v.STEP_MS: 1000 * elapsed / n, v.MFU: self.ctx.meta["flops_per_token"] * tokens_per_sec / peak}
        if (muon_lr := optimizer.lr(muon=True)) is not None:
            metrics[v.TRAIN_LR_MUON] = muon_lr
        if applied:  # the mean over the steps applied: a skipped float16 step has no finite norm
            metrics[v.TRAIN_GRAD_NORM] = state.grad_norm_sum / applied
        self.log(metrics, state.step)
        state.reset_window()
        return metrics

    @torch.inference_mode()
    def estimate_loss(self, split: str) -> float:
        ctx = self.ctx
        gen = torch.Generator().manual_seed(ctx.cfg.seed + 1)  # the same eval batches at every evaluation
        losses = torch.zeros(self.t.eval_iters, device=ctx.device)  # on the device: no host sync per batch
        for i in range(self.t.eval_iters):
            x, y = self.batch(split, gen)
            with dev.autocast(ctx.device, ctx.amp):
                _, loss = ctx.trained(x, y)
            losses[i] = loss.float()
        return ctx.world.mean(losses.mean()).item()

    def evaluate(self, whole_val: bool = False) -> None:
        """The loss estimates of both splits (and, with `whole_val`, the whole val split's loss) and a sample."""
        ctx, state, started = self.ctx, self.ctx.state, time.perf_counter()
        ctx.model.eval()
        val, train = self.estimate_loss("val"), self.estimate_loss("train")
        metrics = {v.VAL_LOSS: val, v.VAL_PPL: v.perplexity(val), v.TRAIN_EVAL_LOSS: train}
        if chars_per_token := ctx.data.chars_per_token("val"):
            metrics[v.VAL_BPC] = val / chars_per_token / LN2  # nats per token -> bits per character
        if whole_val:
            metrics[v.VAL_LOSS_WHOLE] = whole_split_loss(ctx.model, ctx.data.split("val"), ctx.cfg.data.block_size,
                                                         self.t.batch_size // ctx.world.size,  # a rank's share
                                                         ctx.world, ctx.device, ctx.amp)
        sample = self.sample()
        ctx.model.train()
        state.last_eval, state.last_eval_step = metrics, state.step  # the summary's final/*: no machine-bound perf/*
        self.log({**metrics, v.EVAL_S: time.perf_counter() - started}, state.step)
        for tracker in ctx.trackers:
            tracker.log_samples(state.step, sample)
        if val < state.best_val_loss:
            previous = state.best_val_loss, state.best_step
            state.best_val_loss, state.best_step = val, state.step  # best.pt's own state names itself the best
            try:
                self.save("best")
            except BaseException:  # a full disk: summary.json must name the best.pt on disk, not the one refused
                state.best_val_loss, state.best_step = previous
                raise
        if ctx.on_eval is not None:
            ctx.on_eval(state.step, metrics)

    def batch(self, split: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch that `gen` draws: (B / world, T) inputs and targets."""
        ctx = self.ctx
        x, y = ctx.data.get_batch(split, self.t.batch_size, ctx.cfg.data.block_size, gen, ctx.device)
        return ctx.world.shard(x), ctx.world.shard(y)

    def sample(self) -> str:
        ctx = self.ctx
        if self.t.sample_tokens == 0 or not ctx.world.main:
            return ""
        tok = ctx.data.tokenizer
        idx = torch.tensor([tok.encode("\n") or [0]], dtype=torch.long, device=ctx.device)
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.cfg.seed + ctx.state.step)
        out = ctx.model.generate(idx, self.t.sample_tokens, temperature=1.0, top_k=None, generator=gen)
        return tok.decode(out[0].tolist())

    def save(self, kind: str) -> None:
        ctx = self.ctx
        if not ctx.world.main:
            return
        path = ctx.folder.save_checkpoint(kind, {
            "model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "state": {**vars(ctx.state), "last_eval": dict(ctx.state.last_eval)}, "rng": rng_state(ctx.gen),
            "config": to_dict(ctx.cfg), "run_id": ctx.meta["run_id"], "wandb_id": ctx.meta.get("wandb_id"),
            **({"scaler": ctx.scaler.state_dict()} if ctx.scaler is not None else {}),
        })
        if kind == "last":
            self.saved_step = ctx.state.step
        for tracker in ctx.trackers:
            tracker.log_checkpoint(path, kind, ctx.state.step)

    def summary(self) -> dict:
        s = self.ctx.state
        out = {v.BEST_VAL_LOSS: s.best_val_loss, v.BEST_VAL_PPL: v.perplexity(s.best_val_loss), v.BEST_STEP: s.best_step,
               v.TOKENS_SEEN: s.tokens_seen, v.STEPS: s.step, v.WALL_TIME: s.wall_time, v.TRAIN_TIME: s.train_time}
        out.update({v.final(name): value for name, value in s.last_eval.items()})
        return {k: value for k, value in out.items() if not (isinstance(value, float) and math.isinf(value))}


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
