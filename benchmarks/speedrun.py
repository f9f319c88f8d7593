"""The CPU speedrun's record table (issue #17): each recipe from nanoGPT's CPU recipe down to the records, over
seeds, each run a fresh `nanolab run` process (W&B disabled) on this machine, one after another.

    python benchmarks/speedrun.py --json speedrun.json --markdown speedrun.md    # ~15 min on 2 quiet cores
    python benchmarks/speedrun.py --only record --seeds 1 2 3 4 5                # one line, more seeds
    python benchmarks/speedrun.py --step --profile --only                        # the step's figures alone
    python benchmarks/speedrun.py --from-json speedrun.json --markdown F --plot F.png   # again, from saved runs

docs/results/speedrun/runs.json is the published --json: `tests/test_results.py` regenerates the table and the
sentences of docs/results.md from its runs (`published(json)`).

--profile first prints where the record's step goes, by op (torch.profiler, self CPU time, 50 steps).
--step first times the record's training step (`train_step`, this process, 2 threads, candidates in turns) as
it was (torch.optim.Muon: Newton-Schulz in bfloat16, a matrix at a time; relu2 by autograd of relu(x).square();
sdpa attention) and with each change (nanolab's Muon: float32 on the CPU, matrices of one shape batched; relu2's
one-pass backward; the naive kernel). The heap setting's share is benchmarks/heap.py's.

Every recipe runs --seeds; a recipe's `more_seeds` are added after them (the record: seeds 4 and 5). The clock is
the run's summary `train_time`: seconds inside training steps (no evaluation, sample or checkpoint),
the figure modded-nanogpt's records quote. The loss is `final/val_loss_whole`: the whole val split in
non-overlapping windows of the run's context, after the last step. A record holds when every seed is within its budget of
seconds and <= its target loss, and a one-sided t-test of the mean <= the target gives p < 0.01 (modded-nanogpt's
rule); other lines are held to 1.90 with no budget. The markdown is docs/results.md's
record table and a sentence per recipe (`finding`), as this script printed them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median, stdev

import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import interleave, load_warning, parser, print_table, setup, write_json  # noqa: E402

from nanolab.analysis.findings import target_finding  # noqa: E402

SHAKESPEARE = REPO.parent / "shared/data/tinyshakespeare/input.txt"
QUIET = ["train.final_eval=true", "train.sample_tokens=0"]  # and WANDB_MODE=disabled, which wins over any spec


@dataclass(frozen=True)
class Recipe:
    name: str
    change: str
    spec: str  # relative to the repository
    overrides: tuple[str, ...] = ()
    more_seeds: tuple[int, ...] = ()  # run after --seeds: a record's test gains power from more seeds
    target: float = 1.90  # whole-split val loss
    seconds: float | None = None  # a record's budget of training seconds (every seed within it)

    def command(self) -> str:
        sets = f" --set {' '.join(self.overrides)}" if self.overrides else ""
        return f"nanolab run {self.spec}{sets}"


PROBE = ("model.position=rotary", "model.activation=relu2", "model.qk_norm=true", "train.optimizer=muon")
RECIPES = [
    Recipe("nanogpt", "nanoGPT's CPU recipe: 4 x 128, context 64, batch 12, AdamW, cosine, 2,000 steps",
           "experiments/baseline.yaml", ("train.eval_interval=2000",)),
    Recipe("probe", "+ rotary, ReLU^2, QK-norm, Muon (issue #17's untuned probe), 400 steps",
           "experiments/baseline.yaml", (*PROBE, "train.max_iters=400", "train.eval_interval=400")),
    Recipe("record", "+ 3 x 64, context 32, batch 48, untied head, soft-cap 30, wsd, no warmup, naive attention, "
           "300 steps, rates from sweeps/speedrun_10s.yaml", "experiments/speedrun.yaml", more_seeds=(4, 5), seconds=10),
    Recipe("record_60s", "the record's parts at 60 s: 4 x 128, context 64, batch 16, value embeddings, tied head, "
           "850 steps, rates from sweeps/speedrun_60s.yaml",
           "experiments/speedrun_60s.yaml", target=1.55, seconds=60),
]


def train(recipe: Recipe, seed: int, workdir: Path) -> dict:
    runs = workdir / f"{recipe.name}-s{seed}"
    env = {**os.environ, "NANOLAB_RUNS": str(runs), "NANOLAB_CACHE": str(workdir / "cache"), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "nanolab", "run", str(REPO / recipe.spec), "--set", *recipe.overrides, *QUIET,
           f"seed={seed}"]
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    summary = json.loads(next(runs.glob("*/*/summary.json")).read_text())
    return {"seed": seed, "train_time": summary["train_time"], "val_loss_whole": summary["final/val_loss_whole"]}


def line(recipe: Recipe, runs: list[dict]) -> dict:
    losses, times = [r["val_loss_whole"] for r in runs], [r["train_time"] for r in runs]
    p = float(stats.ttest_1samp(losses, recipe.target, alternative="less").pvalue) if len(losses) > 1 else None
    in_time = recipe.seconds is None or max(times) <= recipe.seconds
    return {"recipe": recipe.name, "change": recipe.change, "seeds": len(runs),
            "train_s_median": median(times), "train_s_max": max(times),
            "loss_mean": mean(losses), "loss_sd": stdev(losses) if len(losses) > 1 else None,
            "loss_max": max(losses), "target": recipe.target, "budget_s": recipe.seconds, "p_mean_le_target": p,
            "held": bool(in_time and max(losses) <= recipe.target and p is not None and p < 0.01),
            "command": recipe.command()}


def finding(line: dict, runs: list[dict]) -> str:
    """A recipe's sentence from its runs: how many seeds met the target (with the digits that tell), the seconds
    against the budget, the t-test, and whether the record held."""
    losses = pd.Series({r["seed"]: r["val_loss_whole"] for r in runs})
    times = f"training s median {line['train_s_median']:.1f}, max {line['train_s_max']:.1f}"
    if line["budget_s"]:
        times += f" ({'within' if line['train_s_max'] <= line['budget_s'] else 'over'} {line['budget_s']:g} s)"
    p = "no test" if line["p_mean_le_target"] is None else f"p {line['p_mean_le_target']:.2g}"
    return (f"{line['recipe']}: {target_finding(losses, line['target'])}; {times}; one-sided t-test of the mean "
            f"<= {line['target']:g}: {p}: {'held' if line['held'] else 'not held'}")


def published(results: dict) -> str:
    """The table and the sentences of a --json's runs, as --markdown writes them."""
    runs = results["runs"]
    return markdown([line(recipe, runs[recipe.name]) for recipe in RECIPES if recipe.name in runs], runs)


def markdown(lines: list[dict], runs: dict[str, list[dict]]) -> str:
    head = ("| recipe | change | training s (median, max) | whole-split val loss (mean ± sd, max) | target | "
            "held (p) | command |\n| --- | --- | ---: | ---: | --- | --- | --- |\n")
    rows = []
    for r in lines:
        p = "-" if r["p_mean_le_target"] is None else f"{r['p_mean_le_target']:.2g}"
        budget = f" in {r['budget_s']:g} s" if r["budget_s"] else ""
        rows.append(f"| {r['recipe']} | {r['change']} | {r['train_s_median']:.1f}, {r['train_s_max']:.1f} | "
                    f"{r['loss_mean']:.3f} ± {r['loss_sd'] or 0:.3f}, {r['loss_max']:.3f} (n {r['seeds']}) | "
                    f"≤ {r['target']:.2f}{budget} | {'yes' if r['held'] else 'no'} ({p}) | `{r['command']}` |")
    sentences = [f"- {finding(r, runs[r['recipe']])}" for r in lines]
    return head + "\n".join(rows) + "\n\n" + "\n".join(sentences) + "\n"


def record_step(device):
    """The record's model and a `train_step` closure over its optimizer (or another one given)."""
    from nanolab.runner import build
    from nanolab.spec import load_spec
    from nanolab.train_loop import train_step

    cfg = load_spec(REPO / RECIPES[2].spec)
    built = build(cfg, device)
    batch = lambda: built.data.get_batch("train", cfg.train.batch_size, cfg.data.block_size, built.gen, device)
    return built, lambda optimizer: lambda: train_step(built.model, optimizer, batch, grad_clip=cfg.train.grad_clip)


def step_rows(device) -> list[dict]:
    """The record's step as it was and with each of this round's changes: Muon's iteration (torch's bfloat16, one
    matrix at a time -> nanolab's float32, batched), relu2's backward (autograd of relu(x).square() -> one pass)
    and the attention kernel (sdpa -> naive). Every row has the heap kept (`setup`; benchmarks/heap.py)."""
    import torch
    import torch.nn.functional as F

    from nanolab.components.attention import NaiveAttention, SDPAttention
    from nanolab.components.optim import Optimizers

    built, step = record_step(device)
    muon, adamw = built.optimizer.optimizers
    group = muon.param_groups[0]
    theirs = Optimizers(torch.optim.Muon(group["params"], lr=group["lr"], weight_decay=group["weight_decay"]), adamw)
    mlp = type(built.model.blocks[0].mlp)
    one_pass, autograd = mlp.__dict__["act"], staticmethod(lambda x: F.relu(x).square())
    attentions = [block.attn for block in built.model.blocks]

    def candidate(optimizer, act, kernel):
        train = step(optimizer)

        def call():
            mlp.act = act
            for attn in attentions:
                attn.kernel = kernel
            train()
        return call

    before = "torch Muon, autograd relu2, sdpa (before)"
    candidates = {before: candidate(theirs, autograd, SDPAttention()),
                  "nanolab Muon, autograd relu2, sdpa": candidate(built.optimizer, autograd, SDPAttention()),
                  "nanolab Muon, one-pass relu2, sdpa": candidate(built.optimizer, one_pass, SDPAttention()),
                  "nanolab Muon, one-pass relu2, naive (now)": candidate(built.optimizer, one_pass, NaiveAttention())}
    times = interleave(candidates, steps=200, warmup=20, device=device)
    mlp.act = one_pass  # a class attribute: --profile's model is built afterwards
    ms = {name: 1000 * median(t) for name, t in times.items()}
    return [{"step": name, "step_ms": v, "speedup": ms[before] / v} for name, v in ms.items()]


def profile_rows(device, steps: int = 50) -> list[dict]:
    """Where the record's step goes: torch.profiler's self CPU time by op over `steps` steps, the top 12."""
    import torch

    built, step = record_step(device)
    train = step(built.optimizer)
    for _ in range(10):
        train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return [{"op": e.key, "calls_per_step": e.count / steps, "ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "share_pct": 100 * e.self_cpu_time_total / total} for e in top]


def plot(recipes: list[Recipe], runs: dict[str, list[dict]], path: str) -> None:
    """Every run as a point (training seconds, whole-split loss), a colour per recipe, with each record's box."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in recipes:
        done = runs.get(recipe.name, [])
        points = ax.scatter([r["train_time"] for r in done], [r["val_loss_whole"] for r in done],
                            label=f"{recipe.name} (n {len(done)})", alpha=0.8)
        if recipe.seconds:  # the record's box: within the budget and at or below the target
            ax.plot([0, recipe.seconds, recipe.seconds], [recipe.target] * 2 + [0], ls="--", lw=1,
                    color=points.get_facecolor()[0])
    ax.set_xscale("log")
    ax.set_ylim(top=max(r["val_loss_whole"] for done in runs.values() for r in done) + 0.03,
                bottom=min(r["val_loss_whole"] for done in runs.values() for r in done) - 0.03)
    ax.set_xlabel("training seconds (train_time, log scale)")
    ax.set_ylabel("whole-split val loss")
    ax.set_title("CPU speedrun: each run of each recipe; dashed: a record's budget and target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--only", nargs="*", choices=[r.name for r in RECIPES], help="these recipes alone (none: no run)")
    p.add_argument("--step", action="store_true", help="first, the record's step before and after this round's changes")
    p.add_argument("--profile", action="store_true", help="first, the record's step by op (torch.profiler)")
    p.add_argument("--markdown", metavar="FILE", help="also write the record table of docs/results.md to FILE")
    p.add_argument("--plot", metavar="FILE", help="also plot every run's seconds and loss to FILE (.png, .svg, ...)")
    p.add_argument("--from-json", metavar="FILE", help="read the runs of an earlier --json instead of training")
    args = p.parse_args()
    recipes = [r for r in RECIPES if args.only is None or r.name in args.only]
    figures: dict = {}
    if args.step:
        figures["step"] = step_rows(setup(args))
        print_table("the record's training step, 200 steps each in turns (medians)", figures["step"],
                    ["step", "step_ms", "speedup"])
    if args.profile:
        figures["profile"] = profile_rows(setup(args))
        print_table("the record's step by op (self CPU time, torch.profiler, 50 steps)", figures["profile"],
                    ["op", "calls_per_step", "ms_per_step", "share_pct"])
    runs: dict[str, list[dict]] = json.loads(Path(args.from_json).read_text())["runs"] if args.from_json else {}
    with tempfile.TemporaryDirectory(prefix="nanolab-speedrun-") as tmp:
        (Path(tmp) / "cache/tinyshakespeare").mkdir(parents=True)
        (Path(tmp) / "cache/tinyshakespeare/input.txt").write_bytes(SHAKESPEARE.read_bytes())
        rounds = [(seed, recipes) for seed in args.seeds]  # seed-major: a change in load hits every recipe alike
        rounds += [(seed, [r for r in recipes if seed in r.more_seeds]) for seed in sorted({
            seed for r in recipes for seed in r.more_seeds if seed not in args.seeds})]
        for seed, round_recipes in ([] if args.from_json else rounds):
            for recipe in round_recipes:
                runs.setdefault(recipe.name, []).append(train(recipe, seed, Path(tmp)))
                print(recipe.name, runs[recipe.name][-1], flush=True)
    lines = [line(r, runs[r.name]) for r in recipes]
    if lines:
        print_table(f"the speedrun's recipes over seeds {args.seeds} (+ more_seeds)", lines,
                    ["recipe", "seeds", "train_s_median", "train_s_max", "loss_mean", "loss_sd", "loss_max",
                     "target", "budget_s", "p_mean_le_target", "held"])
    if warning := load_warning():
        print(warning)
    write_json(args.json, {**figures, "seeds": args.seeds, "lines": lines, "runs": runs})
    if args.markdown:
        Path(args.markdown).write_text(markdown(lines, runs))
        print(f"wrote {args.markdown}")
    if args.plot:
        plot(recipes, runs, args.plot)


if __name__ == "__main__":
    main()
