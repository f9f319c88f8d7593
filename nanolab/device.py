"""Devices, precision, the memory a device has free and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import time
from pathlib import Path

import torch

from nanolab import files
from nanolab.errors import NanolabError

# dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from the vendors' data sheets; the first key that the
# device's name contains wins, so a card's variants come before its plain name (H100 PCIe before H100 SXM's)
GPU_PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12,
                  "4090": 165e12, "3090": 71e12}


def available_devices() -> list[str]:
    """The device names this machine can train on: cpu, then cuda and cuda:N, then mps."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu. A device this machine lacks is a NanolabError naming the ones it
    has (before anything is written, rather than a traceback from the first tensor moved there)."""
    if name == "auto":
        return torch.device(next(n for n in ("cuda", "mps", "cpu") if n in available_devices()))
    device = torch.device(name)
    if name in available_devices():
        return device
    kind = {"cuda": "CUDA", "mps": "MPS (Apple GPU)"}.get(device.type, device.type)
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    has = f"{count} CUDA device{'s' * (count > 1)} (cuda:0{f' to cuda:{count - 1}' * (count > 1)})" if count else \
        f"no {kind} device"
    raise NanolabError(f"{key} = {name!r}: this machine has {has}; available: {', '.join(available_devices())}")


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32: `auto` is bf16 on CUDA and fp32 elsewhere. float16 on the
    CPU is refused: its autocast kernels are emulated, many times slower than float32."""
    if dtype == "float16" and device.type == "cpu":
        raise NanolabError("train.dtype = 'float16': float16 autocast on the CPU is emulated (many times slower "
                           "than float32); use float32 or bfloat16 on the CPU")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if dtype == "float32" else getattr(torch, dtype)


def grad_scaler(device: torch.device, amp: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 autocast, whose small gradients would otherwise underflow to zero; None else
    (bfloat16 has float32's range)."""
    return torch.amp.GradScaler(device.type) if amp is torch.float16 else None


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free for a training step, where that figure comes from) on `device`."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {device} ({total / 2**30:.1f} GiB in all)"
    return host_memory()


def host_memory() -> tuple[int, str]:
    """The host's available memory: /proc/meminfo's MemAvailable (else all physical memory), lowered to what a
    cgroup (a container, a Slurm job) still allows."""
    free, source = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    with contextlib.suppress(OSError, ValueError):
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if match:
            free, source = int(match.group(1)) * 1024, "available memory"
    with contextlib.suppress(OSError, ValueError):  # cgroup v2; "max" (no limit) fails int() and is skipped
        cgroup = Path("/sys/fs/cgroup")
        left = int((cgroup / "memory.max").read_text()) - int((cgroup / "memory.current").read_text())
        if left < free:
            free, source = left, "memory left under this cgroup's limit"
    return free, source


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(device: torch.device) -> None:
    """Process-wide fast paths: TF32 matmuls on CUDA (fp32 results within TF32 precision); on the CPU, freed
    tensor memory kept for reuse (`keep_freed_memory`)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process; whether it could (glibc only).

    By default glibc serves allocations of 128 KB or more (a CPU tensor of 32k floats) with fresh mmaps, unmapped
    when freed, and trims its heap's free top: the kernel faults in and zeroes their pages at every first touch,
    ~1,200 page faults and ~10% of a CPU speedrun step (benchmarks/heap.py, benchmarks/NOTES.md). With these
    settings a step reuses the last step's memory; the process keeps its peak heap, which a training loop reaches
    every step anyway.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # 32 MiB is glibc's own ceiling for its mmap threshold on 64-bit, accepted by every version
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@functools.cache
def peak_flops(device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """The device's peak FLOP/s: a data-sheet figure for known GPUs, else a measured fp32 matmul rate, the
    fastest of `repeats` size^3 matmuls (the fastest, not the median: other processes only ever slow one down).
    A measured rate is remembered in `$NANOLAB_CACHE/peak_flops.json` per (device, torch, threads): measuring
    takes ~0.15 s of every run's start on a CPU, for a figure that only MFU uses."""
    if device.type == "cuda" and (sheet := datasheet_peak(device_name(device))):
        return sheet[1]
    from nanolab.data.download import cache_dir

    memo, key = cache_dir() / "peak_flops.json", f"{device_name(device)} | torch {torch.__version__} | " \
                                                  f"{torch.get_num_threads()} threads | {size}^3 fp32 matmul"
    try:
        known = files.read_json(memo) if memo.is_file() else {}
    except NanolabError:  # a damaged memo is measured over
        known = {}
    if key not in known:
        known[key] = measured_matmul_flops(device, size, repeats)
        with contextlib.suppress(files.WriteFailed):  # a read-only cache: measured again next time
            files.write_json(memo, known)
    return known[key]


def datasheet_peak(name: str) -> tuple[str, float] | None:
    """The first GPU_PEAK_FLOPS key that the device's `name` contains, with its peak; None for other devices."""
    return next(((key, flops) for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)


def measured_matmul_flops(device: torch.device, size: int, repeats: int) -> float:
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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
