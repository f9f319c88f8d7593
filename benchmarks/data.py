"""The token cache on a large corpus (issue #14): memory, start-up, batch sampling, and a BPE sweep.

    python benchmarks/data.py                 # a 500 MB corpus: ~10 GB of disk traffic, minutes on 2 cores
    python benchmarks/data.py --mb 20         # a quick look

The corpus: Tiny Shakespeare's lines, shuffled and repeated with word-level noise (in a tenth of the lines two
words swap places, in another tenth a word is replaced by a random word of the play) until it holds --mb MB;
generated from a fixed seed into --workdir. Every run is experiments/baseline.yaml for --steps steps (no
evaluation, no sample, W&B disabled), in a fresh process, with its own NANOLAB_CACHE and NANOLAB_RUNS.

  peak RSS       ru_maxrss of a run on Tiny Shakespeare (its entry prepared) and of the first (preparing) and second
                 (cached) runs on the corpus; the target: the cached run within 200 MB of Tiny Shakespeare's
  first step     seconds from `run(cfg)` to the first training step: the first run prepares the entry, the second
                 opens it; the target: the second >= 10x sooner
  sampling       tokens per second of `get_batch("train", 12, 64)` on the corpus's memory map, against the
                 training step's tokens per second (the cached run's median perf/tokens_per_sec); target >= 100x
  BPE sweep      `nanolab sweep` of 6 trials (2 workers) with `data.tokenizer: bpe` on the corpus: the BPE entries
                 made (each made entry is one training of the tokenizer) and the leftovers of unfinished ones
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import load_warning, parser, print_table, write_json  # noqa: E402

SHAKESPEARE = REPO.parent / "shared/data/tinyshakespeare/input.txt"
NOISE = 0.1  # the share of lines with two words swapped, and again of lines with a word replaced

# One run in a fresh process: prints {"first_step_s", "peak_rss_mb", "tokens_per_sec"} as JSON.
RUN = """\
import json, resource, statistics, sys, time
import nanolab.train_loop as loop
from nanolab import load_spec, run

cfg = load_spec(sys.argv[1], sys.argv[2:])
first_step = []
train_step = loop.train_step
def timed_step(*args, **kwargs):
    if not first_step:
        first_step.append(time.perf_counter())
    return train_step(*args, **kwargs)
loop.train_step = timed_step
start = time.perf_counter()
result = run(cfg, show_progress=False)
rates = [r["perf/tokens_per_sec"] for r in result.folder.metrics() if "perf/tokens_per_sec" in r]
print(json.dumps({"first_step_s": first_step[0] - start, "tokens_per_sec": statistics.median(rates),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SWEEP = """\
experiment: {experiment}
overrides:
  data.path: {corpus}
  data.tokenizer: bpe
  data.vocab_size: 512
  train.max_iters: {steps}
  train.eval_interval: {steps}
  train.eval_iters: 1
  train.sample_tokens: 0
objective: {{metric: val/loss, direction: minimize}}
space:
  train.lr: {{float: [1.0e-4, 3.0e-2], log: true}}
sampler: {{name: random, seed: 0}}
trials: 6
"""


def generate_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Shakespeare's lines shuffled, with word-level noise, repeated until the file holds `megabytes` MB."""
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()
    words = sorted({w for line in lines for w in line.split()})
    rng, written = random.Random(seed), 0
    with path.open("w", encoding="utf-8") as f:
        while written < megabytes * 1e6:
            rng.shuffle(lines)
            block = "\n".join(noisy(line, words, rng) for line in lines) + "\n"
            f.write(block)
            written += len(block.encode("utf-8"))


def noisy(line: str, words: list[str], rng: random.Random) -> str:
    parts = line.split(" ")
    chance = rng.random()
    if len(parts) >= 2 and chance < NOISE:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
    elif parts and chance < 2 * NOISE:
        parts[rng.randrange(len(parts))] = rng.choice(words)
    return " ".join(parts)


def timed_run(workdir: Path, cache: Path, steps: int, corpus: Path | None) -> dict:
    overrides = [f"train.max_iters={steps}", f"train.eval_interval={steps + 1}", "train.sample_tokens=0",
                 "train.log_interval=1", "tracking.wandb.mode=disabled"]
    overrides += [f"data.path={corpus}"] if corpus else []
    env = {**os.environ, "NANOLAB_CACHE": str(cache), "NANOLAB_RUNS": str(workdir / "runs")}
    out = subprocess.run([sys.executable, "-c", RUN, str(REPO / "experiments/baseline.yaml"), *overrides], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def sampling_rate(cache: Path, corpus: Path, seconds: float = 3.0) -> float:
    """Tokens per second that get_batch("train", 12, 64) draws from the corpus's memory-mapped entry."""
    os.environ["NANOLAB_CACHE"] = str(cache)
    import torch

    from nanolab.config import DataConfig
    from nanolab.data import load_data

    data, gen = load_data(DataConfig(path=str(corpus))), torch.Generator().manual_seed(0)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data.get_batch("train", 12, 64, gen)
        calls += 1
    return calls * 12 * 64 / (time.perf_counter() - start)


def bpe_sweep(workdir: Path, corpus: Path, steps: int) -> dict:
    """Run 6 BPE trials on 2 workers in a fresh cache: the BPE entries made, leftovers of unfinished ones."""
    cache, sweep = workdir / "sweep_cache", workdir / "bpe.yaml"
    sweep.write_text(SWEEP.format(experiment=REPO / "experiments/baseline.yaml", corpus=corpus, steps=steps))
    env = {**os.environ, "NANOLAB_CACHE": str(cache), "NANOLAB_RUNS": str(workdir / "sweep_runs"),
           "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nanolab", "sweep", str(sweep), "--workers", "2"], env=env, check=True,
                   capture_output=True, text=True)
    tokens = cache / "tokens"
    return {"trials": 6, "bpe_entries": len([p for p in tokens.glob("bpe-*") if p.is_dir()]),
            "leftovers": len(list(tokens.glob(".*.tmp"))), "seconds": time.perf_counter() - start}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=500, help="size of the generated corpus in MB")
    p.add_argument("--steps", type=int, default=20, help="training steps of each run")
    p.add_argument("--workdir", help="where the corpus, caches and runs go (default: a temporary folder)")
    p.add_argument("--no-sweep", action="store_true", help="skip the BPE sweep (13 minutes at 500 MB on 2 cores)")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nanolab-data-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / "corpus.txt"
    started = time.perf_counter()
    if not corpus.is_file() or corpus.stat().st_size < args.mb * 1e6:  # a --workdir's corpus is made once
        generate_corpus(corpus, args.mb)
    print(f"corpus: {corpus} ({corpus.stat().st_size / 1e6:,.0f} MB, {time.perf_counter() - started:.0f} s to make)")

    tiny_cache, big_cache = workdir / "tiny_cache", workdir / "big_cache"
    for old in (tiny_cache, big_cache, workdir / "sweep_cache", workdir / "runs", workdir / "sweep_runs"):
        shutil.rmtree(old, ignore_errors=True)  # every measurement starts from an empty cache
    (tiny_cache / "tinyshakespeare").mkdir(parents=True)
    (tiny_cache / "tinyshakespeare/input.txt").write_bytes(SHAKESPEARE.read_bytes())
    timed_run(workdir, tiny_cache, args.steps, None)  # prepares Tiny Shakespeare's entry
    tiny = timed_run(workdir, tiny_cache, args.steps, None)
    first = timed_run(workdir, big_cache, args.steps, corpus)
    second = timed_run(workdir, big_cache, args.steps, corpus)
    rate = sampling_rate(big_cache, corpus)
    sweep = {} if args.no_sweep else bpe_sweep(workdir, corpus, args.steps)

    runs = [{"run": "Tiny Shakespeare, cached", **tiny}, {"run": f"{args.mb:g} MB, first (prepares)", **first},
            {"run": f"{args.mb:g} MB, second (cached)", **second}]
    print_table(f"{args.steps}-step runs", runs, ["run", "first_step_s", "peak_rss_mb", "tokens_per_sec"])
    figures = {
        "rss_over_tiny_mb": second["peak_rss_mb"] - tiny["peak_rss_mb"],
        "first_step_speedup": first["first_step_s"] / second["first_step_s"],
        "sampling_tokens_per_sec": rate,
        "sampling_over_training": rate / second["tokens_per_sec"],
        **{f"sweep_{k}": v for k, v in sweep.items()},
    }
    print_table("targets: RSS over Tiny Shakespeare <= 200 MB; first step >= 10x sooner; sampling >= 100x "
                "training; one BPE entry", [figures], list(figures))
    if warning := load_warning():
        print(warning)
    write_json(args.json, {"mb": args.mb, "steps": args.steps, "runs": runs, **figures})


if __name__ == "__main__":
    main()
