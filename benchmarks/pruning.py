"""What pruning saves: the same sweep run with its pruner and with none, from the same sampler seed.

    python benchmarks/pruning.py                      # sweeps/lr.yaml as written: long on a CPU
    python benchmarks/pruning.py --trials 8 --set train.max_iters=150 train.eval_interval=25 model.n_layer=2 \\
        --json pruning.json

Compute is the sum of optimizer steps trained over all trials (a pruned trial stops at the evaluation that
pruned it); the best is the study's best objective. Wall and CPU seconds are printed too, but on a machine
shared with other work only the steps compare fairly (and with --workers > 1 the CPU seconds are the sweep
process's only, not its workers'). Each variant is a fresh study in its own NANOLAB_RUNS
(under --runs, default a temporary folder), so both start from the same seed and history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from nanolab.runfolder import RunStore
from sweep_machines import data_cache
from nanolab.launch import Launched
from nanolab.launch.local import LocalLauncher
from nanolab.sweep import SweepStudy, load_sweep, optimize
from nanolab.sweep.schema import Algorithm

REPO = Path(__file__).resolve().parents[1]


def run_variant(args, label: str, root: Path) -> dict:
    """Run the sweep once with `label`'s pruner ("file": the sweep file's own, "none": no pruning)."""
    os.environ["NANOLAB_RUNS"] = str(root / label)  # the study's journal and run folders live here
    sweep = load_sweep(args.sweep, tuple(args.set))
    if label == "none":
        sweep = replace(sweep, pruner=Algorithm("none"))
    study = SweepStudy.create(sweep)
    started, cpu = time.perf_counter(), time.process_time()
    launched, outcomes = optimize(sweep, study, args.trials, LocalLauncher(args.workers))
    if launched is not Launched.DONE:
        sys.exit(f"{label}: interrupted")
    states = [t.state.name for t in study.trials()]
    if "COMPLETE" not in states:
        sys.exit(f"{label}: no trial completed ({', '.join(o.text for o in outcomes if o.text)[:300]})")
    steps = sum(json.loads(meta.read_text())["steps"] for meta in RunStore().group(sweep.name).glob("trial-*/meta.json"))
    return {"variant": f"{sweep.pruner.name} pruner" if label == "file" else "no pruning", "pruner": sweep.pruner.name,
            "trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"), "steps_trained": steps, "best": study.study.best_value,
            "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def table(rows: list[dict], metric: str) -> str:
    lines = [f"{'variant':<16} {'trials':>6} {'complete':>8} {'pruned':>6} {'steps trained':>13} "
             f"{'best ' + metric:>14} {'wall s':>7} {'cpu s':>7}"]
    for r in rows:
        lines.append(f"{r['variant']:<16} {r['trials']:>6} {r['complete']:>8} {r['pruned']:>6} "
                     f"{r['steps_trained']:>13,} {r['best']:>14.4f} {r['wall_s']:>7.0f} {r['cpu_s']:>7.0f}")
    pruned, full = rows
    saved = 1 - pruned["steps_trained"] / full["steps_trained"]
    lines.append(f"pruning saved {saved:.0%} of the steps; best {metric} {pruned['best']:.4f} with pruning, "
                 f"{full['best']:.4f} without")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "lr.yaml"), help="the sweep file (default lr.yaml)")
    parser.add_argument("--trials", type=int, default=None, help="trials per variant (default: the file's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="experiment overrides")
    parser.add_argument("--workers", type=int, default=1, help="trials at once (1: the same trial order, so the "
                        "same samples, in both variants)")
    parser.add_argument("--runs", help="where the two studies go (default: a temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    args.set = [*args.set, "tracking.wandb.mode=disabled"]
    args.trials = args.trials or load_sweep(args.sweep, tuple(args.set)).trials
    root = Path(args.runs or tempfile.mkdtemp(prefix="nanolab-pruning-"))
    os.environ.update(data_cache(root))  # Tiny Shakespeare from the cache, else the local copy: never downloaded
    rows = [run_variant(args, label, root) for label in ("file", "none")]
    metric = load_sweep(args.sweep, tuple(args.set)).objectives[0].metric
    print(table(rows, metric))
    if args.json:
        Path(args.json).write_text(json.dumps({"sweep": args.sweep, "trials": args.trials, "set": args.set,
                                               "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
