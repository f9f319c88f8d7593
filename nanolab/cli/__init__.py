"""The `nanolab` command: the argument tables and `main` (the commands in commands.py, plans.py and interop.py; what
every verb shares in conventions.py). Every user error is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
import warnings

from nanolab import __version__
from nanolab.cli import conventions
from nanolab.cli.commands import (MAX_SAMPLE_TOKENS, cmd_compare, cmd_components, cmd_coordcheck, cmd_data,
                                  cmd_export, cmd_report, cmd_run, cmd_sample, cmd_sync)
from nanolab.cli.interop import add_parsers as add_interop_parsers
from nanolab.errors import NanolabError
from nanolab.cli.plans import RECEIVED, cmd_ablate, cmd_status, cmd_sweep, stop
from nanolab.launch import BACKENDS
from nanolab.vocab import BEST_VAL_LOSS, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, VAL_LOSS

EPILOG = """examples:
  nanolab run experiments/baseline.yaml
  nanolab run experiments/baseline.yaml --set model.position=rotary train.lr=3e-3
  nanolab run --set train.max_iters=100 experiments/baseline.yaml --print-config
  nanolab run --resume runs/baseline/20261127-101500-ab12
  nanolab run experiments/baseline.yaml --nproc 2      (= torchrun --nproc-per-node 2 -m nanolab run ...)
  nanolab sample runs/baseline/20261127-101500-ab12 --prompt "ROMEO:" --tokens 300
  nanolab export runs/baseline/20261127-101500-ab12 --to hf exports/baseline
  nanolab eval runs/baseline/20261127-101500-ab12 --tasks nanolab_shakespeare
  nanolab import nanogpt ../nanoGPT/out-shakespeare-char
  nanolab sweep sweeps/lr.yaml --workers 2
  nanolab ablate experiments/ablations/position.yaml
  nanolab ablate experiments/ablations/position.yaml --launcher slurm --partition gpu --gpus 1
  nanolab status experiments/ablations/position.yaml
  nanolab compare runs/ --group position --plot position.png
  nanolab coordcheck experiments/baseline.yaml --set model.parametrization=mup model.mup_base_width=32
  nanolab report experiments/ablations/position.yaml --out reports/position
  nanolab components
  nanolab data info experiments/baseline.yaml
  nanolab data prepare experiments/baseline.yaml --set data.tokenizer=bpe
"""


def launcher_flags(p: argparse.ArgumentParser, jobs: str) -> None:
    """--launcher and the Slurm options, which win over the file's `launcher:` block."""
    p.add_argument("--launcher", choices=BACKENDS, default="local",
                   help=f"local (default): processes here; slurm: submit {jobs}, print their ids and logs, and return; "
                   "submitit-local: the same jobs as "
                   "subprocesses through submitit's local executor, followed to the end")
    p.add_argument("--wait", action="store_true", help="with --launcher slurm: follow the jobs until they end")
    g = p.add_argument_group("Slurm options (with --launcher slurm; they win over the file's launcher: block)")
    g.add_argument("--partition", help="sbatch --partition")
    g.add_argument("--time", type=int, metavar="MIN", help="minutes a job may run (default 60); the run saves and "
                   "the job requeues itself 90 s before")
    g.add_argument("--gpus", "--gpus-per-node", type=int, dest="gpus", metavar="N", help="GPUs per node (default 0)")
    g.add_argument("--cpus", type=int, metavar="N", help="CPUs per task = the run's torch threads (default: 8 with "
                   "GPUs, else 1)")
    g.add_argument("--mem-gb", type=float, metavar="GB", help="memory per node")
    g.add_argument("--account", help="sbatch --account")
    g.add_argument("--qos", help="sbatch --qos")
    g.add_argument("--sbatch", action="append", metavar="OPTION", help="another sbatch option, written with '=': "
                   "--sbatch=--constraint=a100 (repeatable)")


def plan_flags(p: argparse.ArgumentParser, sets: dict, jobs: str, slurm_jobs: str, printed: str) -> None:
    """The flags every plan command (sweep, ablate) shares: --workers, the launcher's, --set, --print-config."""
    p.add_argument("--workers", type=int, help=f"{jobs} at once: processes on this machine (default 1; cores/N "
                   "threads and, where several GPUs are visible, one GPU each), or jobs in Slurm's queue (default: all)")
    launcher_flags(p, slurm_jobs)
    p.add_argument("--set", **sets)
    p.add_argument("--print-config", action="store_true", help=f"print the experiment's resolved config, then "
                   f"{printed}, as YAML; runs and writes nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanolab", description="Ablations of small GPT models.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print nanolab's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sets = dict(nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                help="override spec keys, e.g. --set model.position=rotary train.lr=3e-3 (values parse as YAML); "
                f"before or after the file. {conventions.DOTTED_HELP}")

    p = sub.add_parser("run", help="train one model from a spec", description="Train one model from a spec file "
                       "into a new run folder $NANOLAB_RUNS/<name>/<run-id> (default ./runs). Exit 130/143 after "
                       "SIGINT/SIGTERM (the run is saved; continue it with --resume), 1 when the loss diverges.")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a spec YAML file (a run folder's config.yaml repeats that run)")
    p.add_argument("--set", **sets)
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit: nothing runs, nothing is written; without a "
                   "SPEC, the defaults (with --set)")
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue an interrupted run in its own folder")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel over N processes on this machine (starts torchrun; one GPU each on CUDA); "
                   "with --launcher slurm and no GPUs, N tasks per node")
    launcher_flags(p, "one job of --nodes x (GPUs per node, else --nproc) ranks")
    p.add_argument("--nodes", type=int, metavar="N", help="with --launcher slurm: nodes of the job (default 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sample", help="generate text from a trained run", description="Generate text from a run "
                       "folder's checkpoint with the KV cache; the run's saved tokenizer means no corpus is needed.")
    p.add_argument("run_dir", metavar="RUN_FOLDER", help="a run folder (its checkpoint and tokenizer.json)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=500, help=f"new tokens to generate, 0 to {MAX_SAMPLE_TOKENS:,} "
                   "(default 500), printed as they are sampled")
    p.add_argument("--temperature", type=float, default=0.8, help=">= 0; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k >= 1 most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set with mass p, 0 < p <= 1")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator, 0 <= seed < 2**64 "
                   "(default 1337)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint: best (default; last when there is no best) or last")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every token")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a run's model and tokenizer as a Hugging Face directory",
                       description="Write a run folder's checkpoint and tokenizer to OUT_DIR (new or empty) as a "
                       "Hugging Face directory: config.json, model.safetensors and the tokenizer, which "
                       "transformers' AutoModelForCausalLM and AutoTokenizer load without nanolab (needs the hf "
                       "extra: pip install 'nanolab[hf]'). Learned, sinusoidal or no positions with LayerNorm and "
                       "gelu, relu or relu2 become GPT2LMHeadModel; rotary with RMSNorm and swiglu or geglu "
                       "LlamaForCausalLM. Only exact mappings: any other component (ALiBi, post-norm, qk_norm, "
                       "logit_softcap, value_embeds, ...) is refused with exit status 2 and nothing written. A run "
                       "on token ids without text (tokenizer ids) gets no tokenizer.")
    p.add_argument("run_dir", metavar="RUN_FOLDER", help="a run folder (its config, checkpoint and tokenizer)")
    p.add_argument("--to", required=True, choices=["hf"], dest="format",
                   help="the format: hf (Hugging Face transformers, safetensors weights)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write: new, or empty (never overwritten)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint: best (default) or last; a run without it is refused")
    p.set_defaults(func=cmd_export)

    add_interop_parsers(sub)

    p = sub.add_parser("data", help="prepare the token cache, or show what a spec trains on",
                       description="prepare: tokenize a spec's corpus into the token cache ($NANOLAB_CACHE/tokens) "
                       "ahead of its runs, e.g. on a cluster's login node. info: print the files a spec trains on, "
                       "their sizes, the tokens per split, the vocabulary and the cache entry, checking the token files' sizes "
                       "and ids; writes nothing. verify: also hash the cache entry's token files against the "
                       "checksums recorded when they were made.")
    p.add_argument("action", choices=["prepare", "info", "verify"], help="prepare, info or verify")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a spec YAML file")
    p.add_argument("--set", **sets)
    p.add_argument("--rebuild", action="store_true", help="prepare: delete the cache entry first and make it again "
                   "(the fix for a damaged entry)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("components", help="list the registered components",
                       description="Print every registered component: kind, name, description.")
    p.add_argument("--json", action="store_true", help="a JSON object: kind -> name -> description")
    p.set_defaults(func=cmd_components)
    conventions.add_verbs(sub)

    p = sub.add_parser("coordcheck", help="μP's coordinate check: activation size per layer across widths",
                       description="Build the spec's model at each width (model.n_embd), train it a few steps at "
                       "its peak lr on its data, and print and plot the RMS of every layer's output against width, "
                       "with the slope of log2 RMS per doubling: near 0 under μP (model.parametrization: mup), "
                       "growing under the standard parametrization. Writes coordcheck.png, .csv and table.txt.")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a spec YAML file")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256], metavar="W",
                   help="the widths (n_embd) to build, each divisible by model.n_head (default 32 64 128 256)")
    p.add_argument("--steps", type=int, default=4, help="training steps at each width (default 4)")
    p.add_argument("--out", metavar="DIR", help="the folder of the plot and tables (default "
                   "reports/coordcheck/<name>-<parametrization>)")
    p.add_argument("--set", **sets)
    p.set_defaults(func=cmd_coordcheck)

    p = sub.add_parser("sweep", help="run an Optuna study over a sweep file",
                       description="Run (or continue: the same command again adds trials) an Optuna study in which "
                       "every trial is a full run in $NANOLAB_RUNS/<name>/trial-<number>. Results go to "
                       "$NANOLAB_RUNS/sweeps/<name>/: trials.csv, best.yaml (`nanolab run` it), table.txt, and "
                       "journal.log, the default storage (`optuna-dashboard journal.log` shows it). Exit 0; 1 when a "
                       "trial's run crashed or its worker died, or no trial completed; 130 after Ctrl-C, 143 after "
                       "SIGTERM (the interrupted trials resume on the next call); 2 for a bad sweep file or one edited "
                       "since the study began.")
    p.add_argument("sweep_file", nargs="?", metavar="SWEEP", help="a sweep YAML file (see sweeps/)")
    p.add_argument("--trials", type=int, help="trials to run in this call, over all workers (default: the file's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="an Optuna storage URL (e.g. postgresql://...) that workers on many machines "
                   "share, or a journal file path")
    p.add_argument("--status", action="store_true", help="print the table of trials and run nothing")
    p.add_argument("--json", action="store_true", help="with --status: JSON {sweep, trials (as trials.csv), jobs}")
    plan_flags(p, sets, "trials", "a job per trial (the next proposed as one ends, with --wait)",
               "the objectives, space, sampler, pruner, trials and storage")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ablate", help="run a grid of component swaps x seeds",
                       description="Run every grid cell x seed of an ablation file, resolved once: an edit to "
                       "its files while it runs changes no cell, and the next call after an edit stops naming what "
                       "changed. Finished runs are skipped, so repeating the command continues an interrupted "
                       "ablation. Exit 1 when a run crashed or its worker died (the others still run), 130 after "
                       "Ctrl-C, 143 after SIGTERM (the running cells saved; the same command continues them).")
    p.add_argument("ablation_file", nargs="?", metavar="FILE",
                   help="an ablation YAML file (see experiments/ablations/)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the file's `seeds`)")
    plan_flags(p, sets, "runs", "every cell that is neither done nor queued, a job each",
               "every run's id and overrides")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("status", help="the jobs of an ablation or a sweep: Slurm state, run status, metric",
                       description="Print each run of an ablation (a sweep: its table of trials, then its trial "
                       "jobs) with its last Slurm job, the job's state while it is in Slurm's queue (squeue), the "
                       "run's status and best/val_loss. Runs nothing.")
    p.add_argument("plan_file", metavar="FILE", help="an ablation file (grid:) or a sweep file (space:)")
    p.add_argument("--seeds", type=int, nargs="+", help="an ablation's seeds, if they were given to ablate")
    p.add_argument("--set", **sets)
    p.add_argument("--json", action="store_true", help="JSON: an ablation's {ablation, runs, decisions}, a sweep's "
                   "{sweep, trials, jobs}")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("compare", help="compare runs in a table (and a plot)",
                       description="Load run folders into pandas and compare variants across seeds: mean, std, "
                       "difference to a baseline with a 95% confidence interval and a t-test (paired on seeds when "
                       "a variant ran the baseline's seeds, else Welch's), p-values corrected for the number of "
                       "comparisons, the difference relative to the baseline's mean.")
    p.add_argument("runs", nargs="*", metavar="RUNS",
                   help="run folders or roots of run folders (default: $NANOLAB_RUNS, else ./runs; none with --wandb)")
    p.add_argument("--group", help="only runs of this group (an ablation's or sweep's name)")
    p.add_argument("--by", nargs="+", help="config keys that define a variant (default: the keys that vary)")
    p.add_argument("--metric", help=f"a summary key or logged metric to compare (default {BEST_VAL_LOSS}; with "
                   f"--at, a logged metric, default {VAL_LOSS})")
    p.add_argument("--at", metavar="KEY=NUMBER", help="compare each run's val/loss (or --metric) at this point of "
                   "compute, linearly interpolated between its evaluations: step=K, tokens=N, flops=X or wall=SECONDS "
                   "(e.g. --at flops=1e12); refused for runs whose evaluations do not reach it")
    p.add_argument("--correction", default="holm", metavar="METHOD", help="correct the p-values for the number of "
                   "comparisons: holm (Holm-Bonferroni, default), bh (Benjamini-Hochberg) or none")
    p.add_argument("--csv", metavar="F", help="also write the table, every figure unrounded, as CSV")
    p.add_argument("--markdown", metavar="F", help="also write the table and its caption as Markdown")
    p.add_argument("--plot", metavar="F.png", help="val/loss against --x per variant, band = seed spread "
                   "(.png, .pdf, .svg or any format matplotlib writes)")
    p.add_argument("--x", default="step", metavar="AXIS",
                   help="the plot's x axis: step (default), tokens, flops or wall (seconds)")
    p.add_argument("--baseline", metavar="VALUE", help="the variant the others are compared with, e.g. gelu or "
                   "model.norm=rmsnorm,model.norm_placement=pre (default: the one with the most finished runs)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead of run folders")
    p.add_argument("--target", type=float, metavar="X", help="also say, per variant, how many seeds met X (at or "
                   "below it: the metric is minimized), each seed's value with the digits that tell it from X")
    p.add_argument("--json", action="store_true", help="print JSON {caption, rows (every figure unrounded), notes} "
                   "instead of the table")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="write the Markdown report of an ablation or a sweep",
                       description="Write report.md and its plots for an ablation or sweep file that has run (its "
                       "runs in $NANOLAB_RUNS/<name>/): what ran, the comparison and its method (a sweep: the top "
                       "trials and best parameters), val/loss against step and FLOPs, tuned values, environment, "
                       "W&B links. Trains nothing.")
    p.add_argument("plan_file", metavar="FILE", nargs="?", help="an ablation file (grid:) or a sweep file (space:)")
    p.add_argument("--out", metavar="DIR", help="the report's folder (default reports/<name>)")
    p.add_argument("--margin", type=float, metavar="X", help="the findings call a difference equivalent where its "
                   "whole interval lies inside +-X (default: never)")
    p.add_argument("--metric", default=BEST_VAL_LOSS, metavar="M", help="the figure of each run's summary that the "
                   "comparison and its findings are made of (default best/val_loss; e.g. final/val_loss_whole); "
                   "runs.csv names it")
    p.add_argument("--check", metavar="DIR", help="train nothing, write nothing: compare the runs of DIR's runs.csv "
                   "(a published report's folder) with the runs of the same ids in --runs, each 'bit-identical', "
                   "'within X', 'differs by X' or 'missing'; exit 1 unless every run is reproduced")
    p.add_argument("--runs", metavar="ROOT", help="with --check: the runs root holding the fresh runs (default "
                   "$NANOLAB_RUNS, else ./runs)")
    p.add_argument("--tolerance", type=float, default=1e-5, metavar="X", help="with --check: the largest "
                   "difference of a run's final and best val/loss that counts as reproduced (default 1e-5; runs "
                   "at another thread count differ by about 1e-7)")
    p.add_argument("--wandb", action="store_true", help="also create a W&B Report of the runs (online; offline it "
                   "says what it would create and how to create it later)")
    p.add_argument("--entity", metavar="E", help="the W&B entity of the Report (default: WANDB_ENTITY, the "
                   "experiment's tracking.wandb.entity, else your default entity)")
    p.add_argument("--project", metavar="P", help="the W&B project (default: WANDB_PROJECT, else the "
                   "experiment's tracking.wandb.project)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sync", help="upload offline W&B runs", description="Upload the offline W&B runs of these "
                       "run folders (wraps `wandb sync`), for runs trained without network; gives up with one line "
                       "after $NANOLAB_SYNC_TIMEOUT seconds (default 300).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_FOLDER", help="run folders with offline W&B runs")
    p.set_defaults(func=cmd_sync)
    for verb in sub.choices.values():
        conventions.add_common_flags(verb)
    return parser


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"nanolab: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning  # a warning is a line for the user, not a source listing
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(conventions.expand_dotted_flags(argv))
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    args.argv = argv
    conventions.apply_common_flags(args)
    RECEIVED.clear()
    previous = ({signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})  # only it may set handlers
    try:
        return args.func(args)
    except NanolabError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"nanolab: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line, whatever it quotes
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGTERM if "SIGTERM" in RECEIVED else EXIT_SIGINT
    finally:  # main() called in-process (tests, notebooks) leaves the caller's handlers as they were
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
