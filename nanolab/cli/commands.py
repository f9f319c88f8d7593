"""The commands on one run or its results (run, sample, export, data, components, coordcheck, compare, sync, report):
each reads its arguments, calls the module that owns the job and prints what it returns."""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from nanolab.cli import conventions
from nanolab.cli.plans import launch_run
from nanolab.errors import NanolabError
from nanolab.vocab import EXIT_FAILED, EXIT_OK


def cmd_run(args) -> int:
    if args.resume:
        if args.spec or args.set:
            raise NanolabError("--resume takes a run folder alone: the run continues with its saved config")
    else:  # --print-config alone prints the defaults
        the_file(args, "spec", "a SPEC file (or --resume RUN_FOLDER)", required=not args.print_config)
    if args.launcher != "local" and args.resume:
        raise NanolabError("--resume runs here; with --launcher slurm a requeued job continues its run by itself")
    from nanolab.launch import LaunchOptions
    from nanolab.runner import resume_config, run
    from nanolab.spec import load_spec

    options = LaunchOptions.from_args(args)
    cfg = resume_config(Path(args.resume)) if args.resume else load_spec(args.spec, args.set)
    if args.print_config:
        print_config(cfg)
        return EXIT_OK
    if not options.here:
        return launch_run(cfg, options, args.resume)
    result = run(cfg, resume_dir=args.resume)
    figures = ", ".join(f"{k} {v:.4f}" for k, v in result.summary.items() if k.startswith("best/val_"))
    if os.environ.get("RANK", "0") == "0":  # under a torchrun of your own, one line for the job
        print(f"{result.status}: {result.run_dir} ({figures or 'no evaluation'})")
    return result.exit_code


def cmd_sample(args) -> int:
    for dest, (accepted, ok) in SAMPLE_RANGES.items():  # before anything is loaded
        value = getattr(args, dest)
        if value is not None and not ok(value):
            raise NanolabError(f"--{dest.replace('_', '-')} {value}: expected {accepted}")
    from nanolab.runner import load_trained

    model, tokenizer, device = load_trained(Path(args.run_dir), args.checkpoint)
    import torch

    idx = torch.tensor([tokenizer.encode(args.prompt) or [0]], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print(tokenizer.decode(idx[0].tolist()), end="", flush=True)
    # Each new token's text is decoded after the last printed token, which some tokenizers need (ids joins with
    # spaces); held while it ends in a broken character (a BPE token may hold part of a character's bytes)
    before, pending = idx[0, -1:].tolist(), []
    for token in model.stream(idx, args.tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              use_cache=not args.no_cache, generator=gen):
        pending.append(token.item())
        text = tokenizer.decode(before + pending)[len(tokenizer.decode(before)):]
        if not text.endswith("\ufffd") or len(pending) == 16:  # 16: a model that only ever samples broken bytes
            print(text, end="", flush=True)
            before, pending = pending[-1:], []
    print(tokenizer.decode(before + pending)[len(tokenizer.decode(before)):])
    return 0


def cmd_export(args) -> int:
    from nanolab.export import export_hf

    print(export_hf(Path(args.run_dir), Path(args.out_dir), args.checkpoint))
    return EXIT_OK


def cmd_data(args) -> int:
    from nanolab.data.report import data_info, prepare_data, verify_data
    from nanolab.spec import load_spec

    the_file(args, "spec", "a SPEC file")
    data_cfg = load_spec(args.spec, args.set).data
    if args.rebuild and args.action != "prepare":
        raise NanolabError(f"--rebuild: only with `nanolab data prepare`, not `{args.action}`")
    actions = {"prepare": lambda: prepare_data(data_cfg, args.rebuild), "info": lambda: data_info(data_cfg),
               "verify": lambda: verify_data(data_cfg)}
    print(actions[args.action]())
    return EXIT_OK


def cmd_components(args) -> int:
    from nanolab import registry

    if args.json:
        print(conventions.as_json({kind: {e.name: e.description for e in registry.entries(kind)}
                                   for kind in registry.kinds()}))
        return 0
    for kind in registry.kinds():
        print(kind)
        for entry in registry.entries(kind):
            print(f"  {entry.name:<18} {entry.description}")
    return 0


def the_file(args, dest: str, what: str, required: bool = True) -> None:
    """The verb's file: its positional, or the last word after --set (which takes every word it can) without '='."""
    if getattr(args, dest) is None and args.set and "=" not in args.set[-1]:
        setattr(args, dest, args.set.pop())
    if getattr(args, dest) is None and required:
        raise NanolabError(f"nanolab {args.command} needs {what}; see nanolab {args.command} --help")


def print_config(config, variants: dict | None = None) -> None:
    """The resolved config as YAML (`nanolab run` reads it back); then, for a plan, what its runs vary."""
    from nanolab.spec import dump_spec

    print(dump_spec(config), end="")
    if variants:
        print("---")
        print(yaml.safe_dump(variants, sort_keys=False, default_flow_style=None, width=1000), end="")


def cmd_coordcheck(args) -> int:
    from nanolab.coordcheck import coord_check, write
    from nanolab.spec import load_spec

    the_file(args, "spec", "a SPEC file")
    cfg = load_spec(args.spec, args.set)
    out = Path(args.out or Path("reports") / "coordcheck" / f"{cfg.name}-{cfg.model.parametrization}")
    print(write(coord_check(cfg, args.widths, args.steps), out))
    print(f"wrote {out}/coordcheck.png, coordcheck.csv, table.txt")
    return EXIT_OK


def cmd_compare(args) -> int:
    from nanolab.analysis import compare_command

    print(compare_command(args.runs or None, group=args.group, by=args.by, metric=args.metric, csv=args.csv,
                          markdown=args.markdown, plot=args.plot, wandb_path=args.wandb,
                          baseline=args.baseline, correction=args.correction, at=args.at, x=args.x,
                          target=args.target, as_json=args.json))
    return 0


def cmd_sync(args) -> int:
    from nanolab.tracking import sync_runs

    sync_runs([Path(p) for p in args.run_dirs])
    return 0


def cmd_report(args) -> int:
    if (args.entity or args.project) and not args.wandb:
        raise NanolabError("--entity and --project place the W&B Report: add --wandb")
    if args.check:
        return check_report(args)
    if not args.plan_file:
        raise NanolabError("report: give an ablation or sweep FILE, or --check DIR (a published report's folder)")
    from nanolab.analysis.report import wandb_report, write_report

    print(f"wrote {write_report(args.plan_file, args.out, margin=args.margin, metric=args.metric)}")
    if args.wandb:
        print(wandb_report(args.plan_file, args.entity, args.project))
    return EXIT_OK


def check_report(args) -> int:
    """`report --check DIR`: each run of DIR's runs.csv against the fresh run of the same id; exit 1 unless all
    were reproduced."""
    if args.plan_file:
        raise NanolabError(f"report --check {args.check} reads the runs.csv there: give no FILE ({args.plan_file})")
    from nanolab.analysis.published import check_published

    lines, reproduced = check_published(args.check, args.runs, args.tolerance)
    print("\n".join(lines))
    return EXIT_OK if reproduced else EXIT_FAILED


MAX_SAMPLE_TOKENS = 1_000_000  # streamed as sampled, so the bound is on time (minutes on a CPU), not memory
SAMPLE_RANGES = {  # nanolab sample's numbers: dest -> (what is accepted, the check)
    "tokens": (f"an integer in [0, {MAX_SAMPLE_TOKENS:,}]", lambda v: 0 <= v <= MAX_SAMPLE_TOKENS),
    "temperature": ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "top_k": ("an integer >= 1", lambda v: v >= 1),
    "top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "seed": ("an integer in [0, 2**64)", lambda v: 0 <= v < 2**64),  # torch's generator takes 64 bits
}
