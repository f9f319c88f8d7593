"""Training throughput: nanolab's step, nanoGPT's step, and what the harness (runner, W&B) adds.

    python benchmarks/throughput.py                              # every section
    python benchmarks/throughput.py --nanogpt /tmp/nanogpt       # + nanoGPT's step on the same batches
    python benchmarks/throughput.py --sections steps --json throughput.json

Sections (each timed in this one process, candidates in turns, medians after warm-up):

steps    ms/step, tokens/s, MFU and peak memory of one training step for the baseline spec and a larger model:
         a bare loop of run()'s own step, `nanolab.train_loop.train_step` (batch, forward, backward, clip, the
         divergence check, AdamW, zero_grad), with none of run()'s logging, evaluation or checkpoints; the
         same step through torch.compile, and, with --nanogpt DIR, nanoGPT's GPT from DIR/model.py with its
         train.py step (configure_optimizers' AdamW, clip_grad_norm_, zero_grad) on the same batches.
         nanoGPT's code is not part of nanolab: get it with `git clone https://github.com/karpathy/nanoGPT DIR`.
         MFU is against nanolab.device.peak_flops (a measured fp32 1024^3 matmul rate on the CPU), the figure
         the runner's perf/mfu uses. Peak memory: see benchmarks/common.py.
runner   nanolab's run() (W&B offline, every tracker on) against the bare loop for the same steps, model and
         batches. Evaluation, samples and checkpoints are made equal: run() evaluates once, at the end
         (--eval-iters batches per split, no sample) and saves its two checkpoints; the bare loop then runs the
         same evaluation and saves the same two checkpoints. run()'s time is its loop's wall time
         (meta.json `wall_time`): the setup before the first step (data, model, W&B's start) is left to `runs`.
         The overhead is the median over rounds of the ratio of each round's pair (the order alternates).
runs     the wall time of `nanolab run` on the baseline spec for --run-steps steps, each in a new process as a
         user starts it (imports, W&B's service, evaluations, samples, checkpoints and all): W&B disabled,
         W&B offline and, with --variants, torch.compile; with --nanogpt DIR, nanoGPT's own train.py on its
         README's CPU recipe (the same model and schedule; run DIR/data/shakespeare_char/prepare.py first).
         These are the only figures not taken in this process.

torch.compile starts from an empty inductor cache (TORCHINDUCTOR_CACHE_DIR in a temporary folder) unless
--warm-compile-cache: the compile times are those of a first run; a run whose graphs were compiled before
(same shapes, e.g. another seed) hits the on-disk cache and compiles faster.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import (interleave, load_warning, machine, median, parser, peak_memory, print_table, setup,
                    time_calls, write_json)
from nanolab import device as dev
from nanolab import load_spec, run
from nanolab.components.optim import build_optimizer, lr_factor
from nanolab.data import load_data
from nanolab.model import build_model
from nanolab.train_loop import seed_everything, train_step
from nanolab.vocab import MFU, TOKENS_PER_SEC

SPEC = Path(__file__).parents[1] / "experiments" / "baseline.yaml"
CONFIGS = {  # name -> overrides of the baseline spec
    "baseline": [],
    "larger": ["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "data.block_size=256", "train.batch_size=4"],
}
NANOGPT_HINT = "nanoGPT row skipped: pass --nanogpt DIR with DIR/model.py from github.com/karpathy/nanoGPT"


class Batches:
    """run()'s training batches and learning-rate factors, step after step, for `cfg`."""

    def __init__(self, cfg, data, device):
        self.cfg, self.data, self.device = cfg, data, device
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_num = 0

    def draw(self):
        """(x, y): the next batch."""
        return self.data.get_batch("train", self.cfg.train.batch_size, self.cfg.data.block_size, self.gen,
                                   self.device)

    def next_factor(self) -> float:
        """The learning-rate factor of the next step."""
        factor = lr_factor(self.step_num, self.cfg.train)
        self.step_num += 1
        return factor

    def __call__(self):
        """(x, y, lr factor) of the next step (one micro-batch)."""
        factor = self.next_factor()
        return (*self.draw(), factor)


class Bare:
    """run()'s training step (`train_step`) in a bare loop, for `cfg`, on nanolab's model and batches."""

    def __init__(self, cfg, data, device, compile=False):
        seed_everything(cfg.seed)
        self.cfg, self.data, self.device = cfg, data, device
        self.model = build_model(cfg.model, vocab_size=data.vocab_size, block_size=cfg.data.block_size).to(device)
        self.optimizer = build_optimizer(self.model, cfg.train, device.type)
        self.forward = torch.compile(self.model) if compile else self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.amp = dev.autocast_dtype(device, cfg.train.dtype)
        self.batches = Batches(cfg, data, device)

    def __call__(self):
        t = self.cfg.train
        factor = self.batches.next_factor()
        train_step(self.forward, self.optimizer, self.batches.draw, lr_factor=factor, grad_accum=t.grad_accum,
                   grad_clip=t.grad_clip, params=self.params, amp=self.amp, step=self.batches.step_num)

    @torch.inference_mode()
    def evaluate(self, eval_iters: int) -> None:
        """What run() does at an evaluation without a sample: eval_iters batches of each split."""
        self.model.eval()
        t, gen = self.cfg.train, torch.Generator().manual_seed(self.cfg.seed + 1)
        for split in ("val", "train"):
            losses = [self.forward(*self.data.get_batch(split, t.batch_size, self.cfg.data.block_size, gen,
                                                        self.device))[1] for _ in range(eval_iters)]
            torch.stack(losses).mean().item()
        self.model.train()

    def save(self, folder: Path) -> None:
        for kind in ("best", "last"):
            path = folder / f"{kind}.pt"
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class NanoGPT:
    """nanoGPT's train.py step on its own model (DIR/model.py), fed the same batches as `Bare`."""

    def __init__(self, directory: Path, cfg, data, device):
        spec = importlib.util.spec_from_file_location("nanogpt_model", directory / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        m, t = cfg.model, cfg.train
        torch.manual_seed(cfg.seed)
        conf = module.GPTConfig(block_size=m.block_size, vocab_size=data.vocab_size, n_layer=m.n_layer,
                                n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout, bias=m.bias)
        self.model = module.GPT(conf).to(device)
        self.optimizer = self.model.configure_optimizers(t.weight_decay, t.lr, (t.beta1, t.beta2), device.type)
        self.batches, self.train = Batches(cfg, data, device), t

    def __call__(self):
        x, y, factor = self.batches()
        for group in self.optimizer.param_groups:
            group["lr"] = self.train.lr * factor
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # its log line, every step in the CPU recipe (--log_interval=1)


def spec(name: str, extra: list[str] = ()):
    return load_spec(SPEC, overrides=[*CONFIGS[name], *extra, "tracking.wandb.mode=disabled"])


def step_rows(args, device, peak: float) -> list[dict]:
    rows = []
    for name in args.configs:
        cfg = spec(name)
        data = load_data(cfg.data)
        tokens = cfg.train.batch_size * cfg.data.block_size
        candidates = {"nanolab": Bare(cfg, data, device)}
        if args.nanogpt and name == "baseline":
            candidates["nanoGPT"] = NanoGPT(Path(args.nanogpt), cfg, data, device)
        compile_s = None
        if args.compile:
            compiled = candidates["nanolab compiled"] = Bare(cfg, data, device, compile=True)
            first = time_calls(compiled, 3, device)  # the first forward and backward compile
            compile_s = first[0] + first[1] - 2 * first[2]
        single = time_calls(candidates["nanolab"], 2, device)[-1]
        steps = max(5, min(args.steps, int(args.seconds / single)))
        times = interleave(candidates, steps, args.warmup, device)
        flops = candidates["nanolab"].model.flops_per_token()
        for label, fn in candidates.items():
            ms = 1e3 * median(times[label])
            rows.append({"config": name, "step": label, "steps": steps, "ms_per_step": ms,
                         "tokens_per_s": tokens / ms * 1e3, "mfu": flops * tokens / ms * 1e3 / peak,
                         "peak_MB": peak_memory(fn, device) / 2**20,
                         "compile_s": compile_s if label == "nanolab compiled" else None})
        first_ms = rows[-len(candidates)]["ms_per_step"]
        for row in rows[-len(candidates):]:
            row["speed_vs_nanolab"] = first_ms / row["ms_per_step"]
    if not args.nanogpt:
        print(NANOGPT_HINT)
    return rows


def runner_rows(args, device, root: Path) -> list[dict]:
    """run() with W&B offline against the bare loop, same steps and cadence, in turns (order alternating)."""
    n, e = args.runner_steps, args.eval_iters
    extra = [f"train.max_iters={n}", f"train.eval_interval={n}", f"train.eval_iters={e}", "train.sample_tokens=0"]
    cfg = spec("baseline", extra)
    runner_cfg = load_spec(SPEC, overrides=[*extra, "tracking.wandb.mode=offline"])
    data = load_data(cfg.data)

    def bare_loop() -> float:
        bare = Bare(cfg, data, device)
        start = time.perf_counter()
        for _ in range(n):
            bare()
        bare.evaluate(e)
        bare.save(Path(tempfile.mkdtemp(dir=root)))
        return time.perf_counter() - start

    def runner_loop() -> float:
        result = run(runner_cfg)
        logged.extend(m for m in result.folder.metrics() if TOKENS_PER_SEC in m)
        return result.folder.read_meta()["wall_time"]

    seconds, logged = {bare_loop: [], runner_loop: []}, []
    for i in range(args.rounds):
        for fn in (bare_loop, runner_loop)[::1 if i % 2 == 0 else -1]:
            seconds[fn].append(fn())
    tokens = cfg.train.batch_size * cfg.data.block_size
    bare_ms, loop_ms = (1e3 * median(seconds[fn]) / n for fn in (bare_loop, runner_loop))
    ratios = [r / b for b, r in zip(seconds[bare_loop], seconds[runner_loop])]  # each round's pair, side by side
    return [{"what": "bare loop", "rounds": args.rounds, "steps": n, "ms_per_step": bare_ms,
             "tokens_per_s": tokens / bare_ms * 1e3},
            {"what": "run(), W&B offline", "rounds": args.rounds, "steps": n, "ms_per_step": loop_ms,
             "tokens_per_s": tokens / loop_ms * 1e3, "overhead_pct": 100 * (median(ratios) - 1),
             "pct_range": f"{100 * (min(ratios) - 1):+.1f}..{100 * (max(ratios) - 1):+.1f}",
             "logged_tokens_per_s": median([m[TOKENS_PER_SEC] for m in logged]),
             "logged_mfu": median([m[MFU] for m in logged])}]


RUN_VARIANTS = {  # name -> overrides of the baseline spec; the first is the reference of the others
    "wandb-disabled": ["tracking.wandb.mode=disabled"],
    "wandb-offline": ["tracking.wandb.mode=offline"],
    "compiled": ["tracking.wandb.mode=disabled", "train.compile=true"],  # W&B disabled
}


def nanogpt_train(directory: str, steps: int, out_dir: str) -> list[str]:
    """nanoGPT's own train.py with its README's CPU recipe (the baseline spec's model, batch and schedule); it reads
    DIR/data/shakespeare_char/{train,val}.bin, which DIR/data/shakespeare_char/prepare.py writes."""
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
            "--n_head=4", "--n_embd=128", f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--dropout=0.0",
            f"--out_dir={out_dir}"]


def run_rows(args, root: Path) -> list[dict]:
    """Wall time of `nanolab run` on the baseline spec, each in a fresh process as a user starts it, and with
    --nanogpt of nanoGPT's train.py on the same recipe; in turns."""
    commands = {name: ([sys.executable, "-m", "nanolab", "run", str(SPEC), "--set",
                        f"train.max_iters={args.run_steps}", *RUN_VARIANTS[name]], None) for name in args.variants}
    if args.nanogpt:
        out_dir = tempfile.mkdtemp(prefix="nanogpt-out-", dir=root)  # its checkpoints go with the script's folder
        commands["nanoGPT train.py"] = nanogpt_train(args.nanogpt, args.run_steps, out_dir), args.nanogpt
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.run_rounds):
        for name, (command, cwd) in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[name].append(time.perf_counter() - start)
    reference = median(next(iter(walls.values())))
    return [{"run": name, "rounds": args.run_rounds, "steps": args.run_steps, "wall_s": median(w),
             "vs_first_pct": 100 * (median(w) / reference - 1), "extra_s": median(w) - reference}
            for name, w in walls.items()]


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--sections", nargs="+", choices=["steps", "runner", "runs"], default=["steps", "runner", "runs"])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--nanogpt", metavar="DIR", help="a nanoGPT checkout (its model.py) to time beside nanolab")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    p.add_argument("--warm-compile-cache", action="store_true", help="keep inductor's usual on-disk cache")
    p.add_argument("--steps", type=int, default=100, help="timed steps per candidate (at most)")
    p.add_argument("--seconds", type=float, default=15, help="fewer steps when one candidate would take longer")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per candidate")
    p.add_argument("--runner-steps", type=int, default=100, help="steps of each run() and bare loop (runner)")
    p.add_argument("--eval-iters", type=int, default=5, help="batches per split of the one evaluation (runner)")
    p.add_argument("--rounds", type=int, default=8, help="run() / bare loop pairs, order alternating (runner)")
    p.add_argument("--run-steps", type=int, default=500, help="steps of each run() (runs)")
    p.add_argument("--run-rounds", type=int, default=1, help="rounds of the variants (runs)")
    p.add_argument("--variants", nargs="+", choices=list(RUN_VARIANTS), default=list(RUN_VARIANTS)[:2],
                   help="run() variants (runs); the first is the reference")
    args = p.parse_args()
    device = setup(args)
    if warning := load_warning():
        print(warning)
    peak = dev.peak_flops(device)
    figures = {"benchmark": "throughput", "machine": machine(device), "peak_flops": peak, "args": vars(args)}
    print(f"peak: {peak / 1e9:,.1f} GFLOP/s (nanolab.device.peak_flops, {device})")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NANOLAB_RUNS"] = tmp
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_DIR"] = tmp
        if not args.warm_compile_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        if "steps" in args.sections:
            figures["steps"] = rows = step_rows(args, device, peak)
            print_table("training step (median ms; mfu against the measured peak)", rows, list(rows[0]))
        if "runner" in args.sections:
            figures["runner"] = rows = runner_rows(args, device, Path(tmp))
            print_table("harness overhead: run() against the bare loop (baseline)", rows, list(rows[-1]))
        if "runs" in args.sections:
            figures["runs"] = rows = run_rows(args, Path(tmp))
            print_table("`nanolab run` wall time (baseline spec, a new process each)", rows, list(rows[0]))
    figures["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
