"""Data-parallel training under torchrun (PyTorch DistributedDataParallel).

    torchrun --nproc-per-node 2 -m nanolab run experiments/baseline.yaml
    nanolab run experiments/baseline.yaml --nproc 2          # the same, through nanolab.launch.torchrun

Every rank draws the same global batch from the run's seeded generator and trains on its own slice of it, so
the global batch (and the losses, up to float reduction order) do not depend on the world size. Only rank 0
writes the run folder, W&B and checkpoints; every rank resumes from them. One process without torchrun is a
world of one and none of this costs anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nanolab.errors import NanolabError

TIMEOUT = timedelta(seconds=120)  # a collective waiting longer than this means a peer is gone: fail, don't hang


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch (B, ...) -> (B / world, ...)."""
        n = x.size(0) // self.size
        return x[self.rank * n:(self.rank + 1) * n]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (gloo has no AVG: sum, then divide)."""
        if not self.distributed:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on one (so all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init(device_name: str) -> tuple[World, str]:
    """The process group when torchrun started us (gloo on CPU, nccl on CUDA), and this rank's device name."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World(), device_name
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
        device_name = f"cuda:{world.local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world, device_name


def check_batch(world: World, batch_size: int) -> None:
    if batch_size % world.size:
        raise NanolabError(f"train.batch_size = {batch_size}: must be divisible by the number of processes "
                           f"({world.size}): each takes an equal slice of the global batch")


def close(wait_for_all: bool = False) -> None:
    """Tear the process group down; `wait_for_all` first waits for every rank to get here (rank 0 writes the run
    folder after the last step: a rank that tore gloo down meanwhile could abort at exit, "terminate called without
    an active exception"). A rank that failed does not wait: torchrun ends the others."""
    if dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()
