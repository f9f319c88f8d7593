"""Optimizers and learning-rate schedules, registered by name.

An optimizer factory takes the model and the `train` section and returns an `Optimizers`: one or more
torch optimizers stepped together. Every param group keeps its own peak rate as `group["peak_lr"]`; the
schedule gives a factor in [min_lr/lr, 1] that scales them all, so AdamW and Muon groups decay together.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from nanolab import registry
from nanolab.config import TrainConfig


class Optimizers:
    """Several torch optimizers used as one: step, zero_grad, state_dict, param_groups."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        for group in self.param_groups:
            group["peak_lr"] = group["lr"]

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr_factor(self, factor: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor

    def lr(self, muon: bool = False) -> float | None:
        """The current rate of the first Muon optimizer (`muon`), else of the first other one: the rate train.lr
        sets (AdamW's); None where there is none. The groups of one optimizer share their rate."""
        rates = [opt.param_groups[0]["lr"] for opt in self.optimizers if isinstance(opt, torch.optim.Muon) == muon]
        return rates[0] if rates else None

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)


def split_params(model: nn.Module) -> tuple[list, list, list]:
    """(hidden matrices, embedding and head tables, 1-D norms and biases); tied weights appear once."""
    hidden, tables, vectors, seen = [], [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if p.ndim < 2:
                vectors.append(p)
            elif isinstance(module, nn.Embedding) or module is getattr(model, "lm_head", None):
                tables.append(p)
            else:
                hidden.append(p)
    return hidden, tables, vectors


def _adamw(groups: list[dict], train: TrainConfig, device_type: str) -> torch.optim.AdamW:
    # fused kernels exist for CUDA (and recent CPU builds); foreach is the portable fast path
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=fused)


@registry.register("optimizer", "adamw", "AdamW (Loshchilov & Hutter, 2019); no weight decay on norms, biases, embeddings")
def adamw(model: nn.Module, train: TrainConfig, device_type: str) -> Optimizers:
    hidden, tables, vectors = split_params(model)
    head = [p for p in tables if p is getattr(getattr(model, "lm_head", None), "weight", None)]
    embeddings = [p for p in tables if all(p is not h for h in head)]
    groups = [
        {"params": hidden + head, "weight_decay": train.weight_decay},  # an untied head is a matrix like any other
        {"params": embeddings + vectors, "weight_decay": 0.0},
    ]
    if (m := model.cfg.width_mult) != 1.0:  # μP (Yang et al. 2022, Table 3): Adam's hidden lr / m; last, so that
        # train/lr (the first group's rate) stays train.lr's schedule
        groups = [{"params": head, "weight_decay": train.weight_decay}, groups[1],
                  {"params": hidden, "weight_decay": train.weight_decay, "lr": train.lr / m}]
    return Optimizers(_adamw([g for g in groups if g["params"]], train, device_type))


class Muon(torch.optim.Muon):
    """torch.optim.Muon's update (Nesterov momentum, Newton-Schulz orthogonalisation, rate x sqrt(max(1, rows/cols)),
    decoupled weight decay), its iteration run in `ns_dtype` on all matrices of one shape at once. torch runs it in
    bfloat16 one matrix at a time: right on a GPU, but on a CPU without bfloat16 matrix units the speedrun's step
    took 36.8 ms that way and takes 32.5 ms in float32 and batched (benchmarks/NOTES.md)."""

    def __init__(self, params, *, lr: float, weight_decay: float, ns_dtype: torch.dtype):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            momentum, by_shape = group["momentum"], defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                by_shape[p.shape].append((p, p.grad.lerp(buf, momentum) if group["nesterov"] else buf))
            for (rows, cols), pairs in by_shape.items():
                params = [p for p, _ in pairs]
                updates = orthogonalize(torch.stack([u for _, u in pairs]), group, self.ns_dtype)
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                torch._foreach_add_(params, updates.unbind(0), alpha=-group["lr"] * math.sqrt(max(1, rows / cols)))


def orthogonalize(updates: torch.Tensor, group: dict, dtype: torch.dtype) -> torch.Tensor:
    """(n, rows, cols) -> about U V^T of each matrix: the quintic Newton-Schulz iteration of Jordan et al. (2024),
    with torch.optim.Muon's coefficients, steps and epsilon."""
    a, b, c = group["ns_coefficients"]
    x = updates.to(dtype)
    tall = x.size(-2) > x.size(-1)
    x = x.mT if tall else x  # (n, short, long): the Gram matrices are the small side's
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=group["eps"])  # spectral norm <= 1
    for _ in range(group["ns_steps"]):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(updates.dtype)


@registry.register("optimizer", "muon", "Muon (Jordan et al., 2024) on hidden matrices, AdamW on the rest")
def muon(model: nn.Module, train: TrainConfig, device_type: str) -> Optimizers:
    """Under μP the hidden matrices keep muon_lr: Muon's orthogonalised update, scaled by sqrt(rows / cols), already
    has the width-independent spectral norm that μP's lr / m gives Adam (Yang, Simon & Bernstein 2023, "A Spectral
    Condition for Feature Learning", arXiv:2310.17813); μP's init, attention and output scalings still apply."""
    hidden, tables, vectors = split_params(model)
    ns_dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    orthogonal = Muon(hidden, lr=train.muon_lr, weight_decay=train.weight_decay, ns_dtype=ns_dtype)
    rest = [{"params": tables + vectors, "weight_decay": 0.0}]
    return Optimizers(orthogonal, _adamw(rest, train, device_type))


def build_optimizer(model: nn.Module, train: TrainConfig, device_type: str) -> Optimizers:
    return registry.get("optimizer", train.optimizer)(model, train, device_type)


# ----------------------------------------------------------------------------- schedules: progress -> factor in [0, 1]
# A schedule maps the progress through the decay span (0 after warmup, 1 at decay_iters) to a factor (1 at the peak,
# 0 at min_lr); `lr_factor` calls it with the arguments it names out of `schedule_args`, as components are built.


@registry.register("schedule", "cosine", "linear warmup, then cosine decay to min_lr (Loshchilov & Hutter, 2017)")
def cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@registry.register("schedule", "linear", "linear warmup, then linear decay to min_lr")
def linear(progress: float) -> float:
    return 1.0 - progress


@registry.register("schedule", "constant", "linear warmup, then the peak rate throughout")
def constant(progress: float) -> float:
    return 1.0


@registry.register("schedule", "wsd", "linear warmup, constant peak, then a linear cooldown to min_lr over the last "
                   "train.cooldown_frac (Hägele et al. 2024, arXiv:2405.18392)")
def wsd(progress: float, cooldown_frac: float) -> float:
    """Warmup-stable-decay: the peak until 1 - cooldown_frac, then linear to 0 at 1 (modded-nanogpt's cooldown).
    A checkpoint of the stable phase can be cooled down for any shorter budget, and cooldown_frac = 1 is `linear`."""
    return min(1.0, (1.0 - progress) / cooldown_frac)


def schedule_args(progress: float, train: TrainConfig) -> dict:
    """What a schedule may name: the progress, and the `train` keys that shape a schedule."""
    return {"progress": progress, "cooldown_frac": train.cooldown_frac}


def lr_factor(step: int, train: TrainConfig) -> float:
    """The multiplier of the peak rate at `step`, a function of the step alone (so a resumed run continues it):
    warmup, then the schedule from 1 down to min_lr/lr."""
    if step < train.warmup_iters:
        return (step + 1) / (train.warmup_iters + 1)
    floor = train.min_lr / train.lr
    span = max(1, train.decay_iters - train.warmup_iters)
    progress = min(1.0, (step - train.warmup_iters) / span)
    return floor + (1.0 - floor) * registry.construct("schedule", train.schedule, schedule_args(progress, train))
