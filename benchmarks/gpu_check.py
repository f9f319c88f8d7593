"""A GPU check in one command: nanolab's GPU recipes, kernels, sweep workers and KV cache, within 8 minutes.

    python benchmarks/gpu_check.py --json gpu_check.json     # one H100 / H200: ~8 min (--budget S)
    python benchmarks/gpu_check.py --dry-run --json F        # any machine: the plumbing, tiny models, ~40 s on 2 cores
    python benchmarks/gpu_check.py --parts train gpt2        # some parts only

A part starts only while its budget (BUDGETS, seconds on the GPU) fits in what is left of --budget after
SEED_RESERVE; else it is "skipped: <why>". The parts, in order:
  train     shakespeare_gpu.yaml, 500 steps (bf16 autocast, torch.compile, sdpa): tokens/s (median of the logged
            windows but the first, the compile), MFU; val loss at step 500 beside nanoGPT's 1.47 at step 5,000
  steps     a training step (fwd, bwd, clip, AdamW; median of synchronised calls after warm-up): shakespeare_gpu's
            eager vs compiled; naive vs sdpa attention at context 1024 and 4096 (16,384 tokens, eager), peak memory
  gpt2      gpt2_small.yaml, 20 steps: step time (median of steps 6-20), torch.cuda.max_memory_allocated, MFU
  sweep     `nanolab sweep --workers 2`, 2 trials at once on the one GPU: a small one, and one that runs out of
            memory on purpose (an mlp_ratio whose bf16 MLP activation is twice the card, which nanolab's memory
            estimate does not count): expected COMPLETE, FAIL with the OOM as its reason, exit status 1
  generate  model.generate with and without the KV cache, batch 1, on the train part's model: tokens/s
  seed      seed.yaml to its end (5,000 steps): wall time and val loss, beside the seed's "about 15 minutes for
            5,000 iterations on a T4". It gets the time left; when too little, it stops at an evaluation and the
            wall time of 5,000 steps is extrapolated (and labelled so)
MFU: FLOPs per token (model.flops_per_token) x tokens/s / the card's dense bf16 data-sheet peak
(nanolab.device.GPU_PEAK_FLOPS). Runs go to a temporary NANOLAB_RUNS, W&B is disabled, Tiny
Shakespeare comes from NANOLAB_CACHE (or ~/.cache/nanolab) or ../shared/data/tinyshakespeare/input.txt.
--dry-run builds every full-size config, then runs each part on a tiny model for 2 steps (torch.compile on
dynamo's eager backend, train.compile off; the failing trial is refused by nanolab's memory check, no real OOM)
and prints the same table and JSON with every timing "not measured".
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # --budget counts from here, imports included

import gc  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from common import interleave, machine, median, parser, peak_memory, print_table, write_json  # noqa: E402
from nanolab import device as dev  # noqa: E402
from nanolab import load_spec, run  # noqa: E402
from nanolab.components.optim import build_optimizer  # noqa: E402
from nanolab.model import build_model  # noqa: E402
from nanolab.runner import Stop, load_trained  # noqa: E402
from nanolab.train_loop import train_step  # noqa: E402
from nanolab.vocab import STEP_MS, TOKENS_PER_SEC  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data/tinyshakespeare/input.txt"
EXPERIMENTS = REPO / "experiments"
BUDGETS = {"train": 100, "steps": 60, "gpt2": 110, "sweep": 60, "generate": 15, "seed": None}  # seed: the rest
SEED_RESERVE = 120
NM = "not measured"
VOCAB = 65  # Tiny Shakespeare's characters (the steps part times random tokens)
NANOGPT_VAL, NANOGPT_STEPS, T4_SECONDS = 1.47, 5000, 15 * 60
COMMON = ["tracking.wandb.mode=disabled"]
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.block_size=32", "train.batch_size=4",
        "train.grad_accum=1", "train.max_iters=2", "train.eval_interval=2", "train.eval_iters=1",
        "train.warmup_iters=1", "train.sample_tokens=8", "train.compile=false"]
SWEEP = """\
name: gpu-check
experiment: {experiment}
overrides: {overrides}
objective: {{metric: val/loss, direction: minimize}}
space: {{{key}: {{choice: {values}}}}}
sampler: {{name: random, seed: {seed}}}
pruner: none
trials: 2
"""


class Check:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.common = [*COMMON, f"train.device={args.device}"]  # every run, sweep trials too, on --device
        self.device = dev.pick_device(args.device)
        dev.configure(self.device)
        self.deadline = STARTED + args.budget
        self.parts: dict[str, dict] = {}
        self.train_run: Path | None = None  # the train part's run folder, for generate

    def m(self, value):
        """A timing: the value on a real run, "not measured" in a dry run."""
        return NM if self.dry else value

    def spec(self, name: str, *overrides: str, tiny: tuple = ()):
        """The experiment with `overrides`, checked at full size; in a dry run then shrunk by TINY and `tiny`."""
        cfg = load_spec(EXPERIMENTS / name, [*self.common, *overrides])
        return load_spec(EXPERIMENTS / name, [*self.common, *overrides, *TINY, *tiny]) if self.dry else cfg

    def peak(self) -> tuple[float | None, str]:
        if self.dry or self.device.type != "cuda":
            return None, NM
        name = dev.device_name(self.device)
        if sheet := dev.datasheet_peak(name):
            key, peak = sheet
            return peak, f"{name}: {peak / 1e12:.0f} TFLOP/s dense bf16 (nanolab.device.GPU_PEAK_FLOPS[{key!r}])"
        flops = dev.peak_flops(self.device)
        return flops, f"{name}: in no table; a measured fp32/TF32 matmul rate, {flops / 1e12:.0f} TFLOP/s"

    def mfu(self, flops_per_token: float, tokens_per_sec):
        return self.m(None if self.dry else flops_per_token * tokens_per_sec / self.peak()[0])

    def part(self, name: str) -> None:
        budget, left = BUDGETS[name], self.deadline - time.perf_counter()
        keep = SEED_RESERVE if "seed" in self.args.parts else 0
        row = {"status": "ok", "budget_s": budget or round(left)}
        if not self.dry and budget is not None and left - keep < budget:
            row["status"] = f"skipped: needs ~{budget} s, {left:.0f} s left of --budget with {keep} s kept for seed"
        elif not self.dry and budget is None and left < 30:
            row["status"] = f"skipped: {left:.0f} s left of --budget {self.args.budget:.0f}"
        else:
            print(f"--- {name} (budget {row['budget_s']} s, {left:.0f} s left)", flush=True)
            start = time.perf_counter()
            try:
                row.update(getattr(self, name)())
            except Exception as exc:  # a broken part is reported; the others still run
                traceback.print_exc()
                row["status"] = f"failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            row["seconds"] = self.m(round(time.perf_counter() - start, 1))
            gc.collect()
            torch._dynamo.reset()  # every part compiles its own models: no recompile limit carried over
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # the sweep's workers need what this process has cached
        self.parts[name] = row

    def run_spec(self, cfg, on_eval=None):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        result = run(cfg, on_eval=on_eval, show_progress=False)
        if result.status not in ("finished", "interrupted"):
            raise RuntimeError(f"run {result.run_dir} ended {result.status}: {result.reason}")
        return result, result.folder.read_meta(), result.folder.metrics()

    # ------------------------------------------------------------------ the parts
    def train(self) -> dict:
        cfg = self.spec("shakespeare_gpu.yaml", "train.max_iters=500")
        result, meta, rows = self.run_spec(cfg)
        self.train_run, steps = result.run_dir, result.summary["steps"]
        rates = [r[TOKENS_PER_SEC] for r in rows if TOKENS_PER_SEC in r]
        tokens_per_sec = median(rates[1:] or rates)  # the first window holds the compile
        return {"spec": "experiments/shakespeare_gpu.yaml", "steps": steps, "compile": cfg.train.compile,
                "dtype": str(dev.autocast_dtype(self.device, cfg.train.dtype)), "attention": cfg.model.attention,
                "tokens_per_sec": self.m(tokens_per_sec), "step_ms": self.m(cfg.tokens_per_step / tokens_per_sec * 1e3),
                "mfu": self.mfu(meta["flops_per_token"], tokens_per_sec), "wall_s": self.m(meta["wall_time"]),
                "val_loss": result.summary["final/val_loss"], "val_loss_step": steps,
                "nanogpt_val_loss": NANOGPT_VAL, "nanogpt_step": NANOGPT_STEPS,
                "note": f"val loss after {steps} of nanoGPT's {NANOGPT_STEPS} steps: higher by construction, not "
                        f"comparable with its final {NANOGPT_VAL}"}

    def trainer(self, cfg, batch: int):
        """(model, step): step(forward) is one nanolab train_step of `forward` on fixed random tokens."""
        torch.manual_seed(0)
        T = cfg.data.block_size
        model = build_model(cfg.model, vocab_size=VOCAB, block_size=T).to(self.device)
        optimizer, params = build_optimizer(model, cfg.train, self.device.type), list(model.parameters())
        amp = dev.autocast_dtype(self.device, cfg.train.dtype)
        tokens = torch.randint(VOCAB, (batch, T + 1), device=self.device)
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        return model, lambda forward: (lambda: train_step(forward, optimizer, lambda: (x, y), amp=amp, params=params,
                                                           grad_clip=cfg.train.grad_clip))

    def time_steps(self, candidates: dict, flops_per_token: int, context: int, batch: int) -> list:
        times = interleave(candidates, *((2, 1) if self.dry else (10, 3)), self.device, turn=2)
        rows = []
        for name, fn in candidates.items():
            ms = median(times[name]) * 1e3
            memory = None if self.dry or self.device.type != "cuda" else peak_memory(fn, self.device) / 2**20
            rows.append({"case": name, "context": context, "batch": batch, "ms": self.m(ms),
                         "tokens_per_sec": self.m(batch * context / ms * 1e3),
                         "mfu": self.mfu(flops_per_token, batch * context / ms * 1e3), "peak_MB": self.m(memory)})
        rows[-1]["speedup"] = self.m(None if self.dry else rows[0]["ms"] / rows[-1]["ms"])
        return rows

    def steps(self) -> dict:
        cfg = self.spec("shakespeare_gpu.yaml")
        model, step = self.trainer(cfg, cfg.train.batch_size)
        compiled = torch.compile(model, backend="eager" if self.dry else "inductor")
        rows = self.time_steps({"eager": step(model), "compiled": step(compiled)}, model.flops_per_token(),
                               cfg.data.block_size, cfg.train.batch_size)
        for context in (64, 128) if self.dry else (1024, 4096):
            batch, candidates = max(1, (64 if self.dry else 16384) // context), {}
            for attention in ("naive", "sdpa"):
                cfg = self.spec("shakespeare_gpu.yaml", f"model.attention={attention}", f"data.block_size={context}",
                                tiny=(f"data.block_size={context}",))
                model, step = self.trainer(cfg, batch)
                candidates[attention] = step(model)
            rows += self.time_steps(candidates, model.flops_per_token(), context, batch)
            del candidates, model, step
            gc.collect()
        return {"rows": rows, "note": "a training step (forward, backward, clip, AdamW) under the spec's autocast; "
                                      "speedup: the pair's first ms over its second (eager/compiled, naive/sdpa)"}

    def gpt2(self) -> dict:
        cfg = self.spec("gpt2_small.yaml", "train.max_iters=20", "train.log_interval=1", "train.eval_iters=2",
                        "train.sample_tokens=0", tiny=("data.vocab_size=256",))
        result, meta, rows = self.run_spec(cfg)
        times = [r[STEP_MS] for r in rows if STEP_MS in r]
        step_ms = median(times[5:] or times)  # the first steps compile and warm up
        memory = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        tokens_per_sec = cfg.tokens_per_step / step_ms * 1e3
        return {"spec": "experiments/gpt2_small.yaml", "steps": result.summary["steps"], "params": meta["params"],
                "tokens_per_step": cfg.tokens_per_step, "step_ms": self.m(step_ms),
                "tokens_per_sec": self.m(tokens_per_sec), "peak_memory_GiB": self.m(memory),
                "mfu": self.mfu(meta["flops_per_token"], tokens_per_sec), "wall_s": self.m(meta["wall_time"])}

    def sweep(self) -> dict:
        runs = Path(os.environ["NANOLAB_RUNS"])
        if self.dry or self.device.type != "cuda":  # no real OOM on the host: a batch nanolab refuses up front
            key, values, sizes = "train.batch_size", [4, 10**9], [o for o in TINY if not o.startswith("train.batch")]
        else:  # tokens x mlp_ratio x n_embd x 2 bytes (the bf16 MLP activation) = at least twice the card
            tokens, width = 2048 * 256, 64
            total = torch.cuda.get_device_properties(self.device).total_memory
            key, values = "model.mlp_ratio", [4, 2 ** math.ceil(math.log2(2 * total / (tokens * width * 2)))]
            sizes = ["model.n_layer=1", "model.n_head=2", f"model.n_embd={width}", "data.block_size=256",
                     "train.batch_size=2048", "train.max_iters=20", "train.eval_interval=20", "train.eval_iters=5",
                     "train.compile=false"]
        overrides = dict(o.split("=", 1) for o in [*self.common, *sizes, "train.sample_tokens=0"])  # the last one wins
        sweep_file = runs.parent / "sweep.yaml"
        sweep_file.write_text(SWEEP.format(experiment=EXPERIMENTS / "shakespeare_gpu.yaml", key=key, values=values,
                                           overrides="{" + ", ".join(f"{k}: {v}" for k, v in overrides.items()) + "}",
                                           seed=both_seed(key, values)))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "nanolab", "sweep", str(sweep_file), "--workers", "2"],
                              capture_output=True, text=True, timeout=max(60, 2 * BUDGETS["sweep"]))
        seconds, csv = time.perf_counter() - start, runs / "sweeps/gpu-check/trials.csv"
        if not csv.is_file():
            raise RuntimeError(f"no trials.csv; exit status {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
        table, trials = pd.read_csv(csv), []
        for row in table.to_dict("records"):
            reason, value = row.get("user_attrs_fail_reason"), row.get("value_val/loss")
            meta = runs / f"gpu-check/trial-{row['number']}/meta.json"
            trials.append({"trial": row["number"], key: row[f"params_{key}"], "state": row["state"],
                           "worker": row["user_attrs_worker"],
                           "device": pd.read_json(meta, typ="series").get("device") if meta.is_file() else None,
                           "val_loss": value if isinstance(value, float) and math.isfinite(value) else None,
                           "fail_reason": reason[:160] if isinstance(reason, str) else None})
        times = table[["datetime_start", "datetime_complete"]].apply(pd.to_datetime)
        overlap = (times["datetime_complete"].min() - times["datetime_start"].max()).total_seconds()
        by_value = {t[key]: t for t in trials}
        small, big = by_value.get(values[0], {}), by_value.get(values[1], {})
        reason = (big.get("fail_reason") or "").lower()
        oom, refused = "out of memory" in reason or "outofmemory" in reason, "a training step needs" in reason
        problems = [text for text, bad in (
            (f"exit status {proc.returncode}, expected 1", proc.returncode != 1),
            (f"the small trial is {small.get('state')}", small.get("state") != "COMPLETE"),
            (f"the failing trial is {big.get('state')}", big.get("state") != "FAIL"),
            ("its reason is neither an OOM nor nanolab's memory check", not (oom or refused)),
            ("one worker ran both trials", len({t["worker"] for t in trials}) != 2),
            ("a traceback or a dead worker", "Traceback" in proc.stdout + proc.stderr or "died" in reason)) if bad]
        if problems:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise RuntimeError("; ".join(problems))
        return {"workers": 2, "exit_status": proc.returncode, "trials": trials,
                "failure": "CUDA OOM" if oom else "refused by nanolab's memory check (no real OOM)",
                "overlap_s": self.m(overlap), "wall_s": self.m(seconds)}

    def generate(self) -> dict:
        if self.train_run is not None:
            model, _, _ = load_trained(self.train_run, "best", str(self.device))
            source = f"the train part's model ({self.train_run.name})"
        else:
            cfg = self.spec("shakespeare_gpu.yaml")
            model = build_model(cfg.model, vocab_size=VOCAB, block_size=cfg.data.block_size).to(self.device).eval()
            source = "an untrained shakespeare_gpu model (the train part did not run)"
        prompt = torch.randint(VOCAB, (1, 16), generator=torch.Generator().manual_seed(0)).to(self.device)
        new, outputs = model.cfg.block_size - prompt.size(1), {}  # all within the context: one token per step

        def call(use_cache: bool):
            gen = torch.Generator(device=self.device).manual_seed(0)
            outputs[use_cache] = model.generate(prompt, new, use_cache=use_cache, generator=gen)

        times = interleave({"cached": lambda: call(True), "uncached": lambda: call(False)},
                           *((1, 0) if self.dry else (3, 1)), self.device, turn=1)
        cached, uncached = median(times["cached"]), median(times["uncached"])
        return {"model": source, "block_size": model.cfg.block_size, "prompt": prompt.size(1), "new_tokens": new,
                "cached_tokens_per_sec": self.m(new / cached), "uncached_tokens_per_sec": self.m(new / uncached),
                "speedup": self.m(uncached / cached), "same_tokens": torch.equal(outputs[True], outputs[False])}

    def seed(self) -> dict:
        cfg = self.spec("seed.yaml")
        last = [time.perf_counter()]

        def on_eval(step: int, metrics: dict) -> None:  # stop where the next eval interval would pass the budget
            now, took = time.perf_counter(), time.perf_counter() - last[0]
            last[0] = now
            if not self.dry and step < cfg.train.max_iters and now + took > self.deadline - 10:
                raise Stop("interrupted", f"gpu_check: out of time at step {step}")

        result, meta, _ = self.run_spec(cfg, on_eval)
        steps, total, wall = result.summary["steps"], cfg.train.max_iters, meta["wall_time"]
        full = wall * total / steps
        return {"spec": "experiments/seed.yaml", "steps": steps, "max_iters": total, "finished": steps == total,
                "wall_s": self.m(wall), "wall_s_all_steps": self.m(full),
                "wall_note": "measured" if steps == total else f"extrapolated from {steps} of {total} steps",
                "val_loss": result.summary["final/val_loss"],
                "val_note": "at the end" if steps == total else f"at step {steps}; the lr schedule had not ended",
                "t4_reference_s": T4_SECONDS, "speedup_vs_t4": self.m(T4_SECONDS / full)}


def both_seed(key: str, values: list) -> int:
    """A random-sampler seed S under which trial 0 draws values[0] and trial 1 values[1] (trial N's sampler is
    seeded with S + N, README "Seeds"). Not `grid`: nanolab reseeds it per trial, which reshuffles its grid, so
    trials 0 and 1 can get the same point (they do at seed 0 with 2 choices)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def draw(seed: int):
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask().suggest_categorical(
            key, values)

    return next(s for s in range(100) if [draw(s), draw(s + 1)] == values)


def data_cache(tmp: Path) -> None:
    """Tiny Shakespeare for every run and worker: from the cache, else a copy of ../shared/data's."""
    cache = Path(os.environ.get("NANOLAB_CACHE") or "~/.cache/nanolab").expanduser()
    if (cache / "tinyshakespeare/input.txt").is_file():
        return
    if not SHARED.is_file():
        sys.exit(f"gpu_check: Tiny Shakespeare is neither in {cache}/tinyshakespeare/input.txt nor at {SHARED}")
    (tmp / "cache/tinyshakespeare").mkdir(parents=True)
    shutil.copyfile(SHARED, tmp / "cache/tinyshakespeare/input.txt")
    os.environ["NANOLAB_CACHE"] = str(tmp / "cache")


HEADLINE = {"train": ("tokens_per_sec", "mfu", "val_loss"), "steps": (), "gpt2": ("step_ms", "peak_memory_GiB", "mfu"),
            "sweep": ("failure",), "generate": ("cached_tokens_per_sec", "speedup"),
            "seed": ("wall_s_all_steps", "wall_note", "val_loss", "speedup_vs_t4")}


def headline(name: str, row: dict) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ", ".join(f"{k} {fmt(row[k])}" for k in HEADLINE[name] if k in row)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the plumbing on any device: tiny models, no timings")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole check, imports included")
    p.add_argument("--parts", nargs="+", default=list(BUDGETS), choices=list(BUDGETS), help="the parts to run")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, cache copy, sweep file)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check = Check(args)
    if check.device.type != "cuda" and not args.dry_run:
        sys.exit(f"gpu_check: no CUDA device ({check.device}); --dry-run checks the plumbing without one")
    tmp = Path(tempfile.mkdtemp(prefix="nanolab-gpu-check-"))
    os.environ.update(NANOLAB_RUNS=str(tmp / "runs"), WANDB_MODE="disabled", WANDB_SILENT="true")
    data_cache(tmp)
    try:
        for name in args.parts:
            check.part(name)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    peak, source = check.peak()
    rows = [{"part": n, "status": r["status"][:80], "seconds": r.get("seconds"), "budget_s": r["budget_s"],
             "figures": headline(n, r)} for n, r in check.parts.items()]
    print_table(f"gpu_check{' --dry-run: tiny models, timings not measured' * args.dry_run}; peak {source}", rows,
                ["part", "status", "seconds", "budget_s", "figures"])
    if (t := check.parts.get("train", {})).get("val_loss") is not None:
        print(f"\nshakespeare_gpu val loss {t['val_loss']:.4f} at step {t['val_loss_step']}; nanoGPT published "
              f"{NANOGPT_VAL} at step {NANOGPT_STEPS}: not comparable")
    if (s := check.parts.get("seed", {})).get("steps"):
        wall = NM if args.dry_run else f"{s['wall_s_all_steps']:.0f} s ({s['wall_note']})"
        print(f"seed.yaml: wall time for {s['max_iters']} steps {wall} vs ~{T4_SECONDS} s on a T4; "
              f"val loss {s['val_loss']:.4f} {s['val_note']}")
    for name, key in (("steps", "rows"), ("sweep", "trials")):
        if check.parts.get(name, {}).get(key):
            print_table(name, check.parts[name][key], list({k: 0 for r in check.parts[name][key] for k in r}))
    write_json(args.json, {"benchmark": "gpu_check", "dry_run": args.dry_run, "budget_s": args.budget,
                           "wall_s": check.m(round(time.perf_counter() - STARTED, 1)), "machine": machine(check.device),
                           "peak_flops": check.m(peak), "peak_source": source, "parts": check.parts})
    sys.exit(1 if any(r["status"].startswith("failed") for r in check.parts.values()) else 0)


if __name__ == "__main__":
    main()
