"""nanolab's vocabulary: metric names, run statuses, exit codes and the objective rule.

Every module imports these names; none spells a metric or a status as a bare string. The names are identical
in metrics.jsonl, summary.json and W&B.
"""

from __future__ import annotations

import math
import statistics
from enum import Enum
from typing import Iterable

# --------------------------------------------------------------------------- metrics logged at a step
TRAIN_LOSS = "train/loss"  # mean training loss over the steps since the last log
TRAIN_LR = "train/lr"  # the rate train.lr sets (AdamW's), as the optimizer's param groups hold it
TRAIN_LR_MUON = "train/lr_muon"  # optimizer muon: the rate train.muon_lr sets (Muon's hidden matrices)
TRAIN_GRAD_NORM = "train/grad_norm"  # pre-clip
TRAIN_EVAL_LOSS = "train/eval_loss"  # mean over eval_iters batches of the train split
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"  # exp(val/loss)
VAL_BPC = "val/bpc"  # bits per character: loss x tokens / characters / ln 2; absent where the text is unknown
VAL_LOSS_WHOLE = "val/loss_whole"  # train.final_eval: the mean loss over the whole val split, at the end of a run
TOKENS_PER_SEC = "perf/tokens_per_sec"
STEP_MS = "perf/step_ms"
MFU = "perf/mfu"
EVAL_S = "perf/eval_s"  # seconds of the evaluation logged in the same row
# cumulative counters, in every logged row (train and eval), for comparisons at equal compute; perf/* (only)
# depend on the machine, so everything else in a row is reproducible
TOKENS = "compute/tokens"  # training tokens seen, over every rank
FLOPS = "compute/flops"  # TOKENS x the model's training FLOPs per token
WALL = "perf/wall_time"  # seconds since the run started, over every session of it (evaluations included)
EVAL_METRICS = (VAL_LOSS, VAL_PPL, VAL_BPC, TRAIN_EVAL_LOSS)
TRAIN_METRICS = (TRAIN_LOSS, TRAIN_LR, TRAIN_LR_MUON, TRAIN_GRAD_NORM, TOKENS_PER_SEC, STEP_MS, MFU)
COUNTERS = (TOKENS, FLOPS, WALL)
LOGGED_METRICS = (*EVAL_METRICS, VAL_LOSS_WHOLE, EVAL_S, *TRAIN_METRICS, *COUNTERS)
AXES = {"step": "step", "tokens": TOKENS, "flops": FLOPS, "wall": WALL}  # compare --at / --x: name -> row key
# lower is better; W&B keeps min and last
LOSSES = (TRAIN_LOSS, TRAIN_EVAL_LOSS, VAL_LOSS, VAL_PPL, VAL_BPC, VAL_LOSS_WHOLE)

# --------------------------------------------------------------------------- summary.json
BEST_VAL_LOSS = "best/val_loss"
BEST_VAL_PPL = "best/val_ppl"
BEST_STEP = "best/step"
TOKENS_SEEN = "tokens_seen"
STEPS = "steps"
WALL_TIME = "wall_time"
TRAIN_TIME = "train_time"  # seconds in training steps alone, over every session: no evaluation, sample or checkpoint


def perplexity(loss: float) -> float:
    """val/ppl = exp(val/loss); infinite past what a float holds (a diverging run's loss passes 709)."""
    return math.exp(loss) if loss < 709 else math.inf


def final(metric: str) -> str:
    """The summary key of a metric's value at the last evaluation: val/loss -> final/val_loss."""
    return "final/" + metric.replace("/", "_")


SUMMARY_METRICS = (BEST_VAL_LOSS, BEST_VAL_PPL, BEST_STEP, *(final(m) for m in (*EVAL_METRICS, VAL_LOSS_WHOLE)),
                   TOKENS_SEEN, STEPS, WALL_TIME, TRAIN_TIME)


# --------------------------------------------------------------------------- run statuses and exit codes
class RunStatus(str, Enum):
    """meta.json's `status`; a str, so it is written to JSON and compared as its value."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # stopped by a signal, with a checkpoint: resumable
    DIVERGED = "diverged"  # a NaN/inf loss or gradient: a result, not retried
    PRUNED = "pruned"  # stopped early by a sweep's pruner
    FAILED = "failed"  # crashed, or its process died

    def __str__(self) -> str:
        return self.value


ENDED = (RunStatus.FINISHED, RunStatus.DIVERGED)  # a result: a plan skips it on the next call
UNFINISHED = tuple(s for s in RunStatus if s is not RunStatus.FINISHED)  # counted, kept out of statistics

EXIT_OK = 0
EXIT_FAILED = 1  # a run diverged or failed; some job of a plan failed; a sweep without a best trial
EXIT_USAGE = 2  # bad input: one line on stderr
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGUSR2 = 140  # Slurm's warning before a time limit or a preemption (sbatch --signal=USR2@90, as submitit asks)
STATUS_EXIT = {RunStatus.FINISHED: EXIT_OK, RunStatus.PRUNED: EXIT_OK, RunStatus.INTERRUPTED: EXIT_SIGINT,
               RunStatus.DIVERGED: EXIT_FAILED, RunStatus.FAILED: EXIT_FAILED, RunStatus.RUNNING: EXIT_FAILED}


# --------------------------------------------------------------------------- the objective rule
BEST_OF = {VAL_LOSS: BEST_VAL_LOSS, VAL_PPL: BEST_VAL_PPL}
OBJECTIVE_METRICS = (*LOGGED_METRICS, *SUMMARY_METRICS)
PRUNED_ON_VAL_LOSS = (VAL_LOSS, BEST_VAL_LOSS, final(VAL_LOSS), VAL_PPL, BEST_VAL_PPL, VAL_BPC)


def objective_value(metric: str, summary: dict, rows: Iterable[dict]) -> float | None:
    """A finished run's value of an objective metric; None when it is missing.

    A summary key is read from the summary; `val/loss` and `val/ppl` mean the best evaluation (best/val_loss,
    best/val_ppl); other `val/*` their lowest logged value; `perf/*` the median over the logged rows (robust to
    the slow first steps); any other logged name its last value.
    """
    metric = BEST_OF.get(metric, metric)
    if metric in SUMMARY_METRICS:
        value = summary.get(metric)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    values = [float(row[metric]) for row in rows
              if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
    if not values:
        return None
    if metric.startswith("perf/"):
        return statistics.median(values)
    return min(values) if metric.startswith("val/") else values[-1]


def is_usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
