"""What `nanolab sweep --workers 2` gains over `--workers 1` on this machine (issue #11: 1.25x before, aim >= 1.3x).

    python benchmarks/sweep_workers.py                     # 2 pairs of 6 trials x 300 steps: ~6 min on 2 cores
    python benchmarks/sweep_workers.py --pairs 3 --json sweep_workers.json
    python benchmarks/sweep_workers.py --steps 100 --pairs 1   # a quick look

The sweep: experiments/baseline.yaml (4 layers, 128 wide, context 64, batch 12) with sweeps/lr.yaml's
overrides (max_iters 300, an evaluation of 10 batches every 50 steps, no samples), W&B disabled; space train.lr
(log) and train.warmup_iters; sampler random with seed 0 (the same 6 parameter sets in every measurement), no
pruner. Each measurement is a new `python -m nanolab sweep FILE --trials 6 --workers N` process with a fresh
NANOLAB_RUNS (so a fresh journal), timed from its start to its exit; the configurations alternate (1, 2, 1, 2,
...) so that a change in the machine's load hits both, and the figures are medians.

With one worker the trials run in the sweep's own process on torch's default threads (cores); with N workers
each is a spawned process with cores / N threads. To see where the time goes, each measurement also reports,
from the sweep's output (each line time-stamped as it arrives) and the run folders:
  startup   process start -> the first "trial ...: started" line (interpreter, imports, study, workers spawned)
  trial     the trial's own seconds as the board prints them (the run: data, model, steps, evaluations, saves)
  train     the run's `wall_time` (meta.json): its training loop, evaluations and checkpoints included
  step      the median `perf/step_ms` over the trials' logged windows (training steps only)
  tail      the last trial's end -> the process's exit (results, workers joined)
  cpu       CPU seconds of the sweep and its workers; "others used" is the rest of the machine's busy time
            (/proc/stat) over the measurement, as a share of all cores: above 5% the run was not quiet
A measurement waits for a quiet machine first (--wait-quiet), and is stopped and taken again when other
processes take over a quarter of the cores for 10 s (--abort-above): torch's spinning OpenMP threads collapse
under contention (NOTES.md, Threads: a 35 ms step becomes 170-450 ms), which would say nothing about workers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sweep_machines import data_cache, load_average

REPO = Path(__file__).resolve().parents[1]
QUIET = 0.05  # other processes' share of the cores above which a measurement is flagged as not quiet
ENDED = re.compile(r"^trial (\d+) \[.*\]: (\w+).*\((\d+)s\)$")

SWEEP = """\
name: workers-bench
experiment: {experiment}
overrides:
  train.max_iters: {steps}
  train.eval_interval: {eval_interval}
  train.eval_iters: 10
  train.min_lr: 1.0e-5
  train.sample_tokens: 0
  tracking.wandb.mode: disabled
objective: {{metric: val/loss, direction: minimize}}
space:
  train.lr: {{float: [1.0e-4, 3.0e-2], log: true}}
  train.warmup_iters: {{int: [0, 100], step: 10}}
sampler: {{name: random, seed: 0}}
pruner: none
trials: {trials}
"""


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sweep and its workers, once waited for
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(root: int) -> float:
    """CPU seconds of process `root` and its live descendants (and the children they reaped), from /proc."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))  # ppid; u+s time, own+reaped
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, (ppid, _) in procs.items() if ppid == pid and child not in tree]
    return sum(procs[pid][1] for pid in tree if pid in procs) / os.sysconf("SC_CLK_TCK")


class Watch:
    """Stops the measurement (SIGTERM to the sweep) when other processes take more than `limit` of the cores
    over the last `window` seconds: a contended run says nothing about a quiet machine (see QUIET)."""

    def __init__(self, proc: subprocess.Popen, limit: float, window: float = 10.0, every: float = 2.0):
        self.proc, self.limit, self.window, self.every = proc, limit, window, every
        self.contended: str | None = None
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        samples = []  # (time, machine busy s, the sweep's tree s)
        cores = os.cpu_count() or 1
        while not self.stop.wait(self.every):
            samples.append((time.perf_counter(), busy_cpu_s(), tree_cpu_s(self.proc.pid)))
            old = next((x for x in samples if samples[-1][0] - x[0] <= self.window), samples[0])
            span = samples[-1][0] - old[0]
            if span >= self.window * 0.8:
                share = ((samples[-1][1] - old[1]) - (samples[-1][2] - old[2])) / (span * cores)
                if share > self.limit and self.proc.poll() is None:
                    self.contended = f"others took {share:.0%} of the cores over {span:.0f} s"
                    self.proc.terminate()
                    return


def wait_quiet(max_wait: float, window: float = 3.0) -> float:
    """Wait (up to max_wait s) until other processes use < QUIET of the cores over `window` s; the seconds waited."""
    start = time.perf_counter()
    while True:
        before = busy_cpu_s()
        time.sleep(window)
        share = (busy_cpu_s() - before) / (window * (os.cpu_count() or 1))
        waited = time.perf_counter() - start
        if share < QUIET or waited >= max_wait:
            return waited


def measure(args, work: Path, sweep_file: Path, workers: int, index: int, env: dict) -> dict | None:
    """One sweep process, timed; None when it was stopped because other processes took the cores."""
    runs = work / f"w{workers}-{index}"
    shutil.rmtree(runs, ignore_errors=True)  # an attempt stopped for contention leaves its folder
    command = [sys.executable, "-m", "nanolab", "sweep", str(sweep_file), "--trials", str(args.trials),
               "--workers", str(workers), *(["--set", *args.set] if args.set else [])]
    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else 0.0
    load_before, machine_before, mine_before = load_average(), busy_cpu_s(), children_cpu_s()
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env, "NANOLAB_RUNS": str(runs), "PYTHONUNBUFFERED": "1"})
    watch = Watch(proc, args.abort_above) if args.abort_above else None
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in proc.stdout]
    code = proc.wait()
    wall = time.perf_counter() - started
    if watch:
        watch.stop.set()
        if watch.contended:
            print(f"  --workers {workers} #{index}: stopped after {wall:.0f} s, {watch.contended}; again when quiet",
                  flush=True)
            return None
    mine, machine = children_cpu_s() - mine_before, busy_cpu_s() - machine_before
    (work / f"w{workers}-{index}.log").write_text("\n".join(f"{t:8.2f}  {line}" for t, line in lines) + "\n")
    if code:
        tail = "\n".join(line for _, line in lines[-15:])
        sys.exit(f"--workers {workers} exited {code}:\n{tail}\n(log in {work})")
    first = next(t for t, line in lines if line.endswith(": started"))
    ended = [(t, ENDED.match(line)) for t, line in lines]
    ended = [(t, m) for t, m in ended if m]
    statuses = {m.group(2) for _, m in ended}
    metas, steps_ms = [], []
    for meta_file in sorted((runs / "workers-bench").glob("trial-*/meta.json")):
        metas.append(json.loads(meta_file.read_text()))
        rows = [json.loads(line) for line in (meta_file.parent / "metrics.jsonl").read_text().splitlines() if line]
        steps_ms += [r["perf/step_ms"] for r in rows if "perf/step_ms" in r]
    return {"workers": workers, "index": index, "wall_s": round(wall, 1), "exit": code,
            "trials_ended": len(ended), "statuses": sorted(statuses),
            "startup_s": round(first, 2),
            "trial_s_mean": round(statistics.mean(int(m.group(3)) for _, m in ended), 1),
            "train_s_mean": round(statistics.mean(m["wall_time"] for m in metas), 2),
            "train_s_sum": round(sum(m["wall_time"] for m in metas), 1),
            "threads": sorted({m.get("threads") for m in metas}),
            "step_ms_median": round(statistics.median(steps_ms), 1),
            "tail_s": round(wall - max(t for t, _ in ended), 2),
            "waited_for_quiet_s": round(waited), "cpu_s": round(mine, 1),
            "others_cpu_s": round(max(0.0, machine - mine), 1),
            "others_share": round(max(0.0, machine - mine) / (wall * (os.cpu_count() or 1)), 3),
            "load_before": load_before, "load_after": load_average()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=2, help="measurements of each configuration, alternating")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=300, help="train.max_iters of each trial")
    p.add_argument("--workers", type=int, default=2, help="the configuration compared with --workers 1")
    p.add_argument("--experiment", default=str(REPO / "experiments" / "baseline.yaml"))
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more overrides for every trial")
    p.add_argument("--wait-quiet", type=float, default=180, metavar="S",
                   help="before each measurement, wait up to S s for the other processes to leave the cores idle")
    p.add_argument("--abort-above", type=float, default=0.25, metavar="SHARE",
                   help="stop a measurement (and take it again) when other processes use more than SHARE of the "
                        "cores over 10 s; 0: never")
    p.add_argument("--attempts", type=int, default=4, help="tries of each measurement (see --abort-above)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (time-stamped logs, run folders)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanolab-workers-"))
    env = data_cache(work)
    sweep_file = work / "sweep.yaml"
    sweep_file.write_text(SWEEP.format(experiment=Path(args.experiment).resolve(), steps=args.steps,
                                       eval_interval=max(1, args.steps // 6), trials=args.trials))
    print(f"{args.trials} trials x {args.steps} steps of {Path(args.experiment).name}, "
          f"--workers 1 vs --workers {args.workers}, {args.pairs} alternating pairs; {os.cpu_count()} cores, "
          f"load {load_average()}", flush=True)
    rows = []
    for i in range(args.pairs):
        for workers in (1, args.workers):
            for _ in range(args.attempts):
                row = measure(args, work, sweep_file, workers, i, env)
                if row is not None:
                    break
            else:
                sys.exit(f"--workers {workers} #{i}: no quiet measurement in {args.attempts} attempts; try later")
            rows.append(row)
            print(f"  --workers {workers} #{i}: {row['wall_s']:6.1f} s  (startup {row['startup_s']} s, trial "
                  f"{row['trial_s_mean']} s, train {row['train_s_mean']} s, step {row['step_ms_median']} ms, "
                  f"tail {row['tail_s']} s, threads {row['threads']}; cpu {row['cpu_s']} s; waited "
                  f"{row['waited_for_quiet_s']} s, others used {row['others_share']:.0%} of the cores, "
                  f"load {row['load_before']} -> {row['load_after']})",
                  flush=True)

    def med(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["workers"] == workers)

    keys = ["wall_s", "startup_s", "trial_s_mean", "train_s_mean", "step_ms_median", "tail_s"]
    summary = {w: {k: med(w, k) for k in keys} for w in (1, args.workers)}
    pair_ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(rows[0::2], rows[1::2])]
    ratio = summary[1]["wall_s"] / summary[args.workers]["wall_s"]
    print(f"\n{'medians':<14} {'wall s':>7} {'startup s':>9} {'trial s':>8} {'train s':>8} {'step ms':>8} "
          f"{'tail s':>7}")
    for w, s in summary.items():
        print(f"--workers {w:<4} {s['wall_s']:>7.1f} {s['startup_s']:>9.2f} {s['trial_s_mean']:>8.1f} "
              f"{s['train_s_mean']:>8.2f} {s['step_ms_median']:>8.1f} {s['tail_s']:>7.2f}")
    busiest = max(r["others_share"] for r in rows)
    if busiest > QUIET:
        print(f"\nwarning: other processes used up to {busiest:.0%} of the cores during a measurement: torch's "
              "spinning threads collapse under contention (NOTES.md, Threads), so the figures are not a quiet "
              "machine's")
    print(f"\n--workers {args.workers} is {ratio:.2f}x faster than --workers 1 (ratio of medians; pairs: "
          f"{', '.join(f'{r:.2f}' for r in pair_ratios)}); target >= 1.3x: {'met' if ratio >= 1.3 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
                                               "trials": args.trials, "steps": args.steps, "set": args.set,
                                               "rows": rows, "medians": summary, "pair_ratios": pair_ratios,
                                               "ratio": ratio}, indent=2) + "\n")
    if args.keep:
        print(f"logs and run folders kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
