"""Devices, precision and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import contextlib
import functools
import time

import torch

# dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "A10": 125e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32: `auto` is bf16 on CUDA and fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if dtype == "float32" else getattr(torch, dtype)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(device: torch.device) -> None:
    """Process-wide fast paths: TF32 matmuls on CUDA (fp32 results within TF32 precision)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@functools.cache
def peak_flops(device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """The device's peak FLOP/s: a data-sheet figure for known GPUs, else a measured fp32 matmul rate, the
    fastest of `repeats` size^3 matmuls (the fastest, not the median: other processes only ever slow one down)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)
