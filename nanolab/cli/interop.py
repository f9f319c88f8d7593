"""The commands that bring models in from other tools and score them with others: `nanolab eval` (lm-evaluation-
harness) and `nanolab import nanogpt`. Their argument tables and thin calls."""

from __future__ import annotations

import argparse
from pathlib import Path

from nanolab.errors import NanolabError
from nanolab.vocab import EXIT_OK


def cmd_eval(args) -> int:
    from nanolab.evaluate import evaluate_run

    tasks = [task for text in args.tasks for task in text.split(",") if task]
    if not tasks:
        raise NanolabError("--tasks: give at least one lm-eval task name, e.g. --tasks nanolab_shakespeare")
    if args.limit is not None and not args.limit > 0:
        raise NanolabError(f"--limit {args.limit}: expected a number of documents >= 1, or a fraction in (0, 1)")
    if args.batch_size < 1:
        raise NanolabError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    scores = evaluate_run(Path(args.run_dir), tasks, args.checkpoint, args.limit, args.batch_size)
    for key, value in scores.items():
        print(f"{key} {value:.4f}")
    print(f"recorded in {Path(args.run_dir) / 'eval.jsonl'}")
    return EXIT_OK


def cmd_import(args) -> int:
    from nanolab.nanogpt_import import import_nanogpt

    print(import_nanogpt(Path(args.out_dir), Path(args.to) if args.to else None,
                         Path(args.data) if args.data else None))
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a run with lm-evaluation-harness tasks",
                       description="Score a run folder's checkpoint with EleutherAI's lm-evaluation-harness (the eval "
                       "extra: pip install 'nanolab[eval]') through its Hugging Face export, with lm-eval's hf model. "
                       "nanolab_shakespeare, the run's own val split by rolling log-likelihood (bits_per_byte), ships "
                       "with nanolab; any installed lm-eval task whose data is at hand runs too. The figures go to "
                       "the run folder's eval.jsonl and to the run's W&B summary as eval/<task>/<metric>.")
    p.add_argument("run_dir", metavar="RUN_FOLDER", help="a run folder whose model `nanolab export` can write")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                   help="lm-eval task names, spaces or commas between them (e.g. nanolab_shakespeare)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="best (default) or last")
    p.add_argument("--limit", type=float, help="documents per task (a fraction below 1), for a quick look")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size (default 16)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("import", help="turn a nanoGPT out folder into a run folder",
                       description="Turn nanoGPT's out-* folder (ckpt.pt with model_args, config, model, optimizer, "
                       "iter_num, best_val_loss; meta.pkl if present) into a run folder from which sample, export, "
                       "eval, compare and run --resume work. The weights map exactly (_orig_mod. prefixes stripped, "
                       "attn.bias masks dropped) or nothing is written.")
    p.add_argument("source", choices=["nanogpt"], help="the format: nanogpt")
    p.add_argument("out_dir", metavar="OUT_DIR", help="nanoGPT's out folder, holding ckpt.pt")
    p.add_argument("--to", metavar="RUN_FOLDER", help="the run folder to write (new; default "
                   "$NANOLAB_RUNS/<nanoGPT's wandb_run_name or dataset>/<OUT_DIR's name>)")
    p.add_argument("--data", metavar="FOLDER", help="nanoGPT's prepared data (train.bin, val.bin, meta.pkl) that "
                   "the run trains on when resumed and is scored on (default: nanoGPT's data/<dataset> beside "
                   "OUT_DIR, if there)")
    p.set_defaults(func=cmd_import)
