"""What the benchmark scripts share: the command line, timing, peak memory, the printed table and --json.

Timing: `interleave` runs each candidate for some warm-up calls, then takes its timed calls in turns of a few
calls per candidate, so that a change in the machine's load (other processes share the cores) hits every
candidate alike; the figures are medians, and ratios are taken between medians measured in the same process.

Peak memory: on CUDA, the caching allocator's peak; on the CPU, the torch profiler's allocation events (the
most tensor bytes alive at once during the call, above what was alive when it started). Both count tensors
only: not the Python heap, the code, or the allocator's own slack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from nanolab import device as dev

MEMORY_METHOD = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "torch profiler allocation events"}


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every script takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (None: torch's choice)")
    return p


def setup(args) -> torch.device:
    """The device the script measures on, with nanolab's process-wide settings applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = dev.pick_device(args.device)
    dev.configure(device)
    return device


def time_calls(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Seconds of each of n calls of fn, the device synchronised after each."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        dev.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def interleave(candidates: dict[str, Callable[[], object]], steps: int, warmup: int, device: torch.device,
               turn: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each candidate: `warmup` untimed calls each, then `steps` timed calls each, taken
    in turns of `turn` calls per candidate."""
    for fn in candidates.values():
        time_calls(fn, warmup, device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    while any(len(t) < steps for t in times.values()):
        for name, fn in candidates.items():
            times[name] += time_calls(fn, min(turn, steps - len(times[name])), device)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes: the most tensor memory alive at once during fn(), above what was alive when it started."""
    if device.type == "cuda":
        dev.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        dev.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType  # the profiler's event tree: every allocation and free, in order

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            changes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    live = peak = 0
    for _, size in sorted(changes):
        live += size
        peak = max(peak, live)
    return peak


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": dev.device_name(torch.device("cpu")), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
            "memory_method": MEMORY_METHOD.get(device.type, "n/a")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_warning() -> str | None:
    """A warning when other processes keep the cores busy (absolute figures suffer; same-process ratios less)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load >= cores:
        return (f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU, "
                f"absolute figures are pessimistic; compare the ratios, measured side by side in this process")
    return None


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A plain-text table of `rows` (dicts) under `title`; missing values print as '-'."""
    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))


def write_json(path: str | None, figures: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
        print(f"\nwrote {path}")
