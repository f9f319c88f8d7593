"""What `device.keep_freed_memory` saves: the record's training step with glibc's default malloc (tensors of 128 KB
or more in fresh mmaps or a trimmed heap, faulted in at first touch) and with freed memory kept.

    python benchmarks/heap.py --pairs 5        # ~1.5 minutes on 2 cores

The two settings cannot share a process (malloc's settings are process-wide), so each sample is a fresh process,
the two alternating: `--steps` steps of experiments/speedrun.yaml's `train_step` after 20 untimed ones, 2 threads.
It reports the median step, and the minor page faults and the kernel's CPU time per step (getrusage).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import load_warning, median, parser, print_table, write_json  # noqa: E402

CHILD = """\
import json, resource, sys, time
from statistics import median
import torch
sys.path.insert(0, {benchmarks!r})
from nanolab import device as dev
from speedrun import record_step
torch.set_num_threads(2)
kept = sys.argv[1] == "kept" and dev.keep_freed_memory()
built, step = record_step(torch.device("cpu"))
train = step(built.optimizer)
for _ in range(20):
    train()
times, before = [], resource.getrusage(resource.RUSAGE_SELF)
for _ in range({steps}):
    started = time.perf_counter()
    train()
    times.append(time.perf_counter() - started)
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"kept": kept, "step_ms": 1000 * median(times),
                  "faults_per_step": (after.ru_minflt - before.ru_minflt) / len(times),
                  "sys_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / len(times)}}))
"""


def sample(mode: str, steps: int) -> dict:
    child = CHILD.format(benchmarks=str(REPO / "benchmarks"), steps=steps)
    out = subprocess.run([sys.executable, "-c", child, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="processes of each setting (alternating)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per process")
    args = p.parse_args()
    samples: dict[str, list[dict]] = {"default": [], "kept": []}
    for _ in range(args.pairs):
        for mode in samples:
            samples[mode].append(sample(mode, args.steps))
            print(mode, samples[mode][-1], flush=True)
    rows = [{"malloc": mode, **{key: median([s[key] for s in runs]) for key in ("step_ms", "faults_per_step",
                                                                                 "sys_ms_per_step")}}
            for mode, runs in samples.items()]
    pair_ratios = [d["step_ms"] / k["step_ms"] for d, k in zip(samples["default"], samples["kept"])]
    print_table(f"the record's step, medians of {args.pairs} processes each (pair ratios default / kept: "
                f"{', '.join(f'{r:.2f}' for r in pair_ratios)})", rows,
                ["malloc", "step_ms", "faults_per_step", "sys_ms_per_step"])
    if warning := load_warning():
        print(warning)
    write_json(args.json, {"pairs": args.pairs, "steps": args.steps, "medians": rows, "samples": samples,
                           "pair_ratios": pair_ratios})


if __name__ == "__main__":
    main()
