"""Fixed cost of a run: seconds from process start to the first training step, W&B disabled and offline.

    python benchmarks/startup.py              # 5 of each, alternating, fresh processes: ~1 minute on 2 cores

Each sample is `nanolab run experiments/baseline.yaml --set train.max_iters=1 ...` in a new Python process,
started by this script: the clock starts just before the process is spawned and stops when the run calls its
first `train_step` (the child prints time.time() then; the two clocks are the same machine's wall clock). The
child also reports when its imports of nanolab's run path (torch included) were done, and the whole 1-step
run's wall time (its evaluation, checkpoint and W&B finish included).
Target (issue #17): <= 1.5 s disabled, <= 2.0 s offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import load_warning, median, parser, print_table, write_json  # noqa: E402

CHILD = """\
import json, sys, time
import nanolab.train_loop as loop
from nanolab.cli import main
imported = time.time()
step = loop.train_step
def first_step(*args, **kwargs):
    if loop.train_step is first_step:
        print(json.dumps({"imported": imported, "first_step": time.time()}), flush=True)
        loop.train_step = step
    return step(*args, **kwargs)
loop.train_step = first_step
sys.exit(main(sys.argv[1:]))
"""
SHAKESPEARE = REPO.parent / "shared/data/tinyshakespeare/input.txt"
OVERRIDES = ["train.max_iters=1", "train.eval_interval=1", "train.eval_iters=1", "train.sample_tokens=0"]


def sample(mode: str, workdir: Path) -> dict:
    env = {**os.environ, "NANOLAB_RUNS": str(workdir / "runs"), "NANOLAB_CACHE": str(workdir / "cache"),
           "WANDB_MODE": mode, "WANDB_DIR": str(workdir), "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-c", CHILD, "run", str(REPO / "experiments/baseline.yaml"), "--set", *OVERRIDES,
           f"tracking.wandb.mode={mode}"]
    spawned = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    ended = time.time()
    marks = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    return {"imports_s": marks["imported"] - spawned, "first_step_s": marks["first_step"] - spawned,
            "run_s": ended - spawned}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="samples of each mode (alternating)")
    args = p.parse_args()
    samples: dict[str, list[dict]] = {"disabled": [], "offline": []}
    with tempfile.TemporaryDirectory(prefix="nanolab-startup-") as tmp:
        (Path(tmp) / "cache/tinyshakespeare").mkdir(parents=True)
        (Path(tmp) / "cache/tinyshakespeare/input.txt").write_bytes(SHAKESPEARE.read_bytes())
        sample("disabled", Path(tmp))  # prepares the token cache; warms the page cache (torch read from disk)
        for _ in range(args.repeats):
            for mode in samples:
                samples[mode].append(sample(mode, Path(tmp)))
    rows = [{"W&B": mode, **{key: median([s[key] for s in runs]) for key in runs[0]}}
            for mode, runs in samples.items()]
    print_table(f"seconds from process start, medians of {args.repeats} (targets: first step <= 1.5 disabled, "
                "<= 2.0 offline)", rows, ["W&B", "imports_s", "first_step_s", "run_s"])
    if warning := load_warning():
        print(warning)
    write_json(args.json, {"repeats": args.repeats, "medians": rows, "samples": samples})


if __name__ == "__main__":
    main()
