"""`nanolab sweep FILE`: an Optuna study in which every trial is a full nanolab run.

    # sweeps/lr.yaml
    name: lr                                    # default: the file's stem; the study, W&B group and runs' folder
    experiment: ../experiments/baseline.yaml    # relative to this file
    overrides: {train.max_iters: 300}           # for every trial (a list of KEY=VALUE, or a mapping)
    objective: {metric: val/loss, direction: minimize}   # or a list of them: a Pareto front
    space:
      train.lr: {float: [1.0e-4, 3.0e-2], log: true}     # also `step`
      train.warmup_iters: {int: [0, 100], step: 10}      # also `log`
      model.activation: {choice: [gelu, swiglu]}         # every choice is built into a Config before trial 0
    sampler: {name: tpe, seed: 0}               # tpe | random | grid | cmaes | qmc, plus the sampler's options
    pruner: {name: median, n_warmup_steps: 50}  # median | hyperband | successive_halving | none, plus options
    trials: 12                                  # per call; `--trials` wins
    storage: postgresql://host/db               # absent: a journal file in the sweep folder

Objective metrics: a summary.json key (best/val_loss, final/val_loss, tokens_seen, wall_time, ...) is read from
the run's summary; `val/loss` and `val/ppl` mean the best of the run's evaluations (= best/val_loss,
best/val_ppl) and `val/bpc` its lowest logged value; `perf/*` is the median over the run's logged rows (robust
to the slow first steps); any other metrics.jsonl name is its last logged value. A missing, NaN or infinite
objective fails the trial. A single val-loss objective is pruned on val/loss, reported at every evaluation.

Storage: by default a JournalStorage file `$NANOLAB_RUNS/sweeps/<name>/journal.log`, safe for several local
worker processes; `--storage URL` takes any Optuna RDB URL (postgresql://...) that workers on many machines
share. Running the command again continues the study. Optuna 5's JournalStorage has no heartbeat, so a RUNNING
trial whose worker process on this host is gone is failed and retried once when a worker next starts a trial;
RDB storages use Optuna's heartbeat (a trial silent for GRACE_PERIOD seconds is failed and retried once).
Each call runs exactly `trials` trials over its workers (a shared counter claimed before each one).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import signal
import socket
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from nanolab.checkpoint import read_json, write_text
from nanolab.config import NAME_PATTERN, Config, ConfigError
from nanolab.errors import NanolabError, SpecError
from nanolab.registry import closest
from nanolab.runner import Stop, run, runs_root
from nanolab.spec import check_key, dump_spec, format_override, from_dict, load_spec, normalize_overrides
from nanolab.spec import parse_override, read_yaml

S = optuna.samplers
SAMPLERS = {"tpe": S.TPESampler, "random": S.RandomSampler, "grid": S.GridSampler, "cmaes": S.CmaEsSampler,
            "qmc": S.QMCSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
DIRECTIONS = ("minimize", "maximize")
SUMMARY_METRICS = ("best/val_loss", "best/val_ppl", "best/step", "final/val_loss", "final/val_ppl", "final/val_bpc",
                   "final/train_eval_loss", "tokens_seen", "steps", "wall_time")
LOGGED_METRICS = ("val/loss", "val/ppl", "val/bpc", "train/eval_loss", "train/loss", "train/lr", "train/grad_norm",
                  "perf/tokens_per_sec", "perf/step_ms", "perf/mfu")
BEST_OF = {"val/loss": "best/val_loss", "val/ppl": "best/val_ppl"}
PRUNED_ON_VAL_LOSS = ("val/loss", "best/val_loss", "final/val_loss", "val/ppl", "best/val_ppl", "val/bpc")
DISTRIBUTIONS = {"float": ("log", "step"), "int": ("log", "step"), "choice": ()}
DEFAULTS = {"sampler": "tpe", "pruner": "median"}
HEARTBEAT_INTERVAL, GRACE_PERIOD = 60, 180  # seconds, RDB storages only
# heartbeats, their retry callback and metric names are "experimental" in Optuna 5, and stable enough for us
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _accepted(value: Any, choices: list[str], what: str) -> str:
    hint = closest(str(value), choices)
    suffix = f" (did you mean {hint!r}?)" if hint else ""
    return f"unknown {what}; accepted: {', '.join(choices) or '(none)'}{suffix}"


# ----------------------------------------------------------------------------- the sweep file


@dataclass(frozen=True)
class SweepFile:
    """The keys of a sweep file as written; `load_sweep` turns the free-form ones into the types below."""

    experiment: str = ""
    space: dict = field(default_factory=dict)
    name: str | None = None
    overrides: Any = None
    objective: Any = None
    sampler: Any = DEFAULTS["sampler"]
    pruner: Any = DEFAULTS["pruner"]
    trials: int = 20
    storage: str | None = None

    def __post_init__(self):
        if not self.experiment:
            raise ConfigError("experiment", None, "required: the spec every trial starts from, relative to this file")
        if not self.space:
            raise ConfigError("space", self.space, "expected at least one dotted key with a distribution")
        if self.trials < 1:
            raise ConfigError("trials", self.trials, "must be >= 1")


@dataclass(frozen=True)
class Objective:
    metric: str = "val/loss"
    direction: str = "minimize"

    def __post_init__(self):
        metrics = [*LOGGED_METRICS, *SUMMARY_METRICS]
        if self.metric not in metrics:
            raise ConfigError("metric", self.metric, _accepted(self.metric, metrics, "metric"))
        if self.direction not in DIRECTIONS:
            raise ConfigError("direction", self.direction, _accepted(self.direction, list(DIRECTIONS), "direction"))


@dataclass(frozen=True)
class Dimension:
    """One `space:` entry: a dotted config key and the values a trial may give it."""

    key: str
    kind: str  # float | int | choice
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.key, self.choices)

    def values(self) -> list:
        """The values checked against the experiment before any trial: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class Algorithm:
    """A sampler or pruner: its name and its constructor's options (a sampler's `seed` among them)."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: everything a worker process needs to run trials (picklable)."""

    path: Path
    name: str
    experiment: Path
    overrides: tuple[str, ...]  # the file's `overrides:`, then `--set`
    objectives: tuple[Objective, ...]
    space: tuple[Dimension, ...]
    sampler: Algorithm
    pruner: Algorithm
    trials: int
    storage: str  # an Optuna RDB URL, or the path of a journal file

    @property
    def folder(self) -> Path:
        return runs_root() / "sweeps" / self.name

    @property
    def prunable(self) -> bool:
        return len(self.objectives) == 1 and self.objectives[0].metric in PRUNED_ON_VAL_LOSS

    def config(self, params: dict, job_type: str | None = None) -> Config:
        """The experiment with the overrides, `params` and the study's name and W&B group applied."""
        extra = [f"name={self.name}", f"tracking.group={self.name}"]
        if job_type:
            extra.append(f"tracking.job_type={job_type}")
        extra += [format_override(key, value) for key, value in params.items()]
        return load_spec(self.experiment, (*self.overrides, *extra))


def load_sweep(path: str | Path, overrides: tuple[str, ...] = (), storage: str | None = None) -> Sweep:
    """Read a sweep file and check everything (every choice built into a Config) before any trial runs."""
    path = Path(path)
    source = str(path)
    raw = from_dict(SweepFile, read_yaml(path), source)
    experiment = path.parent / raw.experiment
    if not experiment.is_file():
        raise SpecError(f"{source}: experiment = {raw.experiment!r}: no such file {experiment}")
    name = raw.name or path.stem
    if not NAME_PATTERN.match(name):
        raise SpecError(f"{source}: name = {name!r}: letters, digits and _ . = + - (it names the study's folders)")
    file_overrides = normalize_overrides(raw.overrides, source)
    for text in file_overrides:
        parse_override(text, Config, f"{source}: overrides")
    base: tuple[str, ...] = ()
    for extra, where in (((), str(experiment)), (file_overrides, f"{source}: overrides"), (tuple(overrides), "--set")):
        base += extra
        if problem := _config_problem(experiment, base):
            raise SpecError(f"{where}: {problem}")
    sweep = Sweep(path, name, experiment, base, _objectives(raw.objective, source),
                  tuple(_dimension(key, spec, source) for key, spec in raw.space.items()),
                  _algorithm(raw.sampler, "sampler", SAMPLERS, source),
                  _algorithm(raw.pruner, "pruner", PRUNERS, source), raw.trials,
                  _storage_url(storage, raw.storage, path, name))
    for dim in sweep.space:
        for value in dim.values():
            if problem := _config_problem(experiment, (*base, format_override(dim.key, value))):
                where = "space" if problem.startswith(f"{dim.key} = ") else f"space.{dim.key} = {value!r}"
                raise SpecError(f"{source}: {where}: {problem}")
    for kind, make in (("sampler", make_sampler), ("pruner", make_pruner)):
        try:
            make(sweep)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{source}: {kind}: {exc}") from None
    return sweep


def _config_problem(experiment: Path, overrides: tuple[str, ...]) -> str | None:
    """What load_spec finds wrong with the experiment and these overrides (the experiment's name left out)."""
    try:
        load_spec(experiment, overrides)
    except SpecError as exc:
        return str(exc).removeprefix(f"{experiment}: ")
    return None


def _objectives(raw: Any, source: str) -> tuple[Objective, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SpecError(f"{source}: objective = []: expected {{metric: ..., direction: ...}} or a list of them")
    out = []
    for i, item in enumerate(items):
        prefix = f"objective[{i}]." if isinstance(raw, list) else "objective."
        out.append(from_dict(Objective, {"metric": item} if isinstance(item, str) else item or {}, source, prefix))
    return tuple(out)


def _dimension(key: str, spec: Any, source: str) -> Dimension:
    check_key(Config, key, f"{source}: space")
    where = f"{source}: space.{key}"
    kinds = [k for k in DISTRIBUTIONS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1:
        raise SpecError(f"{where} = {spec!r}: expected one of {{float: [low, high], log: true}}, "
                        "{int: [low, high], step: n}, {choice: [a, b, ...]}")
    kind = kinds[0]
    for option in spec:
        if option not in (kind, *DISTRIBUTIONS[kind]):
            raise SpecError(f"{where}.{option}: {_accepted(option, [kind, *DISTRIBUTIONS[kind]], 'option')}")
    if kind == "choice":
        choices = spec["choice"]
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise SpecError(f"{where}.choice = {choices!r}: expected a non-empty list of plain values "
                            "(strings, numbers, true/false, null)")
        return Dimension(key, kind, choices=tuple(choices))
    bounds = [_number(b, kind) for b in spec[kind]] if isinstance(spec[kind], list) else []
    if len(bounds) != 2 or None in bounds or bounds[0] >= bounds[1]:
        raise SpecError(f"{where}.{kind} = {spec[kind]!r}: expected [low, high], {kind}s with low < high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool) or (log and bounds[0] <= 0):
        raise SpecError(f"{where}.log = {log!r}: expected true or false; true needs low > 0")
    number = None if step is None else _number(step, kind)
    if step is not None and (number is None or number <= 0 or (log and (kind == "float" or number != 1))):
        raise SpecError(f"{where}.step = {step!r}: expected a {kind} > 0, and no step with log: true")
    return Dimension(key, kind, bounds[0], bounds[1], log, number)


def _number(value: Any, kind: str) -> float | int | None:
    """A bound or step as an int (kind int) or float, or None; YAML 1.1 reads `1e-3` as a string."""
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    try:
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _algorithm(raw: Any, kind: str, table: dict, source: str) -> Algorithm:
    """`name` or `{name: ..., option: value, ...}` (name defaults to tpe / median); unknown options are refused."""
    options = dict(raw) if isinstance(raw, dict) else {"name": raw}
    name = options.pop("name", DEFAULTS[kind])
    if name not in table:
        key = f"{kind}.name" if isinstance(raw, dict) else kind
        raise SpecError(f"{source}: {key} = {name!r}: {_accepted(name, list(table), kind)}")
    accepted = [p for p in inspect.signature(table[name]).parameters if p != "search_space"]
    for option in options:
        if option not in accepted:
            raise SpecError(f"{source}: {kind}.{option}: {_accepted(option, accepted, f'option of the {name} {kind}')}")
    return Algorithm(name, options)


def make_sampler(sweep: Sweep, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler; worker processes offset its seed so that they do not all propose the same parameters."""
    options = dict(sweep.sampler.options)
    if options.get("seed") is not None:
        options["seed"] += seed_offset
    if sweep.sampler.name == "grid":
        ranges = [d.key for d in sweep.space if d.kind == "float"]
        if ranges:
            raise ValueError(f"grid needs a choice or an int range for every space key; {ranges[0]} is a float range")
        options["search_space"] = {d.key: d.values() if d.kind == "choice" else
                                   list(range(d.low, d.high + 1, d.step or 1)) for d in sweep.space}
    return SAMPLERS[sweep.sampler.name](**options)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    return PRUNERS[sweep.pruner.name](**sweep.pruner.options)


# ----------------------------------------------------------------------------- storage and study


def _storage_url(cli: str | None, in_file: str | None, path: Path, name: str) -> str:
    """--storage wins over the file's `storage:`; a plain path (relative to cwd or the file) is a journal file."""
    if cli:
        return cli if "://" in cli else str(Path(cli).resolve())
    if in_file:
        return in_file if "://" in in_file else str((path.parent / in_file).resolve())
    return str((runs_root() / "sweeps" / name / "journal.log").resolve())


def is_journal(url: str) -> bool:
    return "://" not in url


def safe(url: str) -> str:
    """A storage URL fit to print: the password masked."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if is_journal(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as exc:  # a bad URL, a missing driver, a server that does not answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NanolabError(f"storage {safe(url)}: cannot open it ({type(exc).__name__}: {first})") from None


def open_study(sweep: Sweep, create: bool = False, **kwargs) -> optuna.Study:
    """Load the study (KeyError when absent), or create it when `create` and absent."""
    storage = open_storage(sweep.storage)
    if not create:
        return optuna.load_study(study_name=sweep.name, storage=storage, **kwargs)
    directions = [o.direction for o in sweep.objectives]
    study = optuna.create_study(storage=storage, study_name=sweep.name, directions=directions, load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise SpecError(f"{sweep.path}: objective: study {sweep.name!r} in {safe(sweep.storage)} optimizes "
                        f"{stored}, this file {directions}; give the sweep a new `name`")
    if study.metric_names is None:
        study.set_metric_names([o.metric for o in sweep.objectives])
    return study


def quiet() -> None:
    """One line per trial is ours to print: Optuna's INFO lines and its tracebacks of failed trials go."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


# ----------------------------------------------------------------------------- one trial


class TrialFailed(Exception):
    """A trial without a usable objective (diverged, crashed, NaN or infinite): FAIL, and the study goes on."""


def run_trial(sweep: Sweep, trial: optuna.Trial) -> float | list[float]:
    """Run one trial as a full nanolab run in `$NANOLAB_RUNS/<study>/trial-<number>`; return its objective(s)."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    params = {dim.key: dim.suggest(trial) for dim in sweep.space}
    run_id = f"trial-{trial.number}"
    run_dir = runs_root() / sweep.name / run_id
    if run_dir.exists():  # left by an earlier study of this name (another storage, or a deleted journal)
        aside = run_dir.rename(run_dir.with_name(f"{run_id}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        print(f"nanolab: {run_dir} belongs to an earlier study {sweep.name!r}; moved to {aside}", flush=True)
    trial.set_user_attr("run_dir", str(run_dir))
    label = f"trial {trial.number} [{', '.join(f'{k}={_short(v)}' for k, v in params.items())}]"
    started = time.perf_counter()
    try:
        result = run(sweep.config(params, job_type="sweep"), run_id=run_id, show_progress=False,
                     on_eval=_pruning_hook(trial) if sweep.prunable else None,
                     extra_meta={"sweep": sweep.name, "trial": trial.number, "trial_params": params})
    except Exception as exc:  # a crash fails this trial, not the study
        _fail(trial, label, f"{type(exc).__name__}: {exc}")
    took = f"({time.perf_counter() - started:.0f}s)"
    reason = read_json(result.run_dir / "meta.json").get("reason") or ""
    if result.status == "pruned":
        print(f"{label}: pruned, {reason} {took}", flush=True)
        raise optuna.TrialPruned(reason)
    if result.status != "finished":
        _fail(trial, label, f"{result.status}: {reason}".rstrip(": "), interrupted=result.status == "interrupted")
    values = [metric_value(o.metric, result.run_dir, result.summary) for o in sweep.objectives]
    for objective, value in zip(sweep.objectives, values):
        if value is None or not math.isfinite(value):
            _fail(trial, label, f"objective {objective.metric} is {value}")
    print(f"{label}: {', '.join(f'{o.metric} {v:.4f}' for o, v in zip(sweep.objectives, values))} {took}", flush=True)
    return values[0] if len(values) == 1 else values


def _pruning_hook(trial: optuna.Trial):
    def on_eval(step: int, metrics: dict) -> None:
        trial.report(metrics["val/loss"], step)
        if trial.should_prune():
            raise Stop("pruned", f"at step {step} with val/loss {metrics['val/loss']:.4f}")

    return on_eval


def _fail(trial: optuna.Trial, label: str, reason: str, interrupted: bool = False) -> None:
    trial.set_user_attr("fail_reason", reason)
    print(f"{label}: FAIL, {reason}", flush=True)
    raise KeyboardInterrupt if interrupted else TrialFailed(reason)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metric_value(metric: str, run_dir: Path, summary: dict) -> float | None:
    """An objective's value for a finished run, by the rule in the module docstring; None when it is missing."""
    metric = BEST_OF.get(metric, metric)
    if metric in SUMMARY_METRICS:
        return summary.get(metric)
    values = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            value = json.loads(line).get(metric)
        except (ValueError, AttributeError):
            continue  # a torn last line
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
    if not values:
        return None
    if metric.startswith("perf/"):
        return statistics.median(values)
    return min(values) if metric.startswith("val/") else values[-1]


# ----------------------------------------------------------------------------- workers


class Budget:
    """The trials this call may still start, shared by its worker processes: none lost, none over."""

    def __init__(self, total: int, timeout: float | None, ctx):
        self.total, self.deadline = total, (time.time() + timeout) if timeout else None
        self.claimed = ctx.Value("i", 0)

    def claim(self, study: optuna.Study, journal: bool, exhausted=lambda: False) -> bool:
        """Take one trial if any is left and the timeout has not passed; first, under the lock, recover dead ones."""
        with self.claimed.get_lock():
            self.recover(study, journal)
            if self.claimed.value >= self.total or (self.deadline and time.time() > self.deadline) or exhausted():
                return False
            self.claimed.value += 1
            return True

    def recover(self, study: optuna.Study, journal: bool) -> None:
        if journal:
            with self.claimed.get_lock():
                self.claimed.value -= recover_dead_workers(study)


def recover_dead_workers(study: optuna.Study) -> int:
    """Journal storage has no heartbeat: fail, and retry once, RUNNING trials whose process on this host is gone.

    Returns the number of retries queued; the caller gives them back to its budget (a dead worker's trial is
    replaced, not counted)."""
    host, retries = socket.gethostname(), 0
    for frozen in study.get_trials(states=(TrialState.RUNNING,)):
        owner, _, pid = frozen.user_attrs.get("worker", "").rpartition(":")
        if owner != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(frozen._trial_id, "fail_reason", f"worker process {pid} died")
        study.tell(frozen.number, state=TrialState.FAIL)
        retried = not RetryHeartbeatStaleTrialCallback.retry_history(frozen)  # not itself a retry
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, frozen)  # `frozen` predates the fail_reason
        retries += retried
        print(f"trial {frozen.number}: FAIL, its worker process {pid} died{'; retried' * retried}", flush=True)
    return retries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def work(sweep: Sweep, budget: Budget, seed_offset: int, gpu: str | None = None, threads: int | None = None) -> None:
    """One worker: claim a trial from the budget, run it against the shared storage, repeat."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # CUDA initialises lazily, at this process's first CUDA call
    if threads:
        import torch

        torch.set_num_threads(threads)
    quiet()
    sampler = make_sampler(sweep, seed_offset)
    study = open_study(sweep, sampler=sampler, pruner=make_pruner(sweep))

    def exhausted() -> bool:
        return isinstance(sampler, S.GridSampler) and sampler.is_exhausted(study)

    while budget.claim(study, is_journal(sweep.storage), exhausted):
        study.optimize(lambda trial: run_trial(sweep, trial), n_trials=1, catch=(TrialFailed,))


def _worker_process(*args) -> None:
    """A spawned worker's entry point: user errors are one line, Ctrl-C is exit status 130."""
    try:
        work(*args)
    except NanolabError as exc:
        print(f"nanolab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def visible_gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def optimize(sweep: Sweep, trials: int, workers: int = 1, timeout: float | None = None) -> int:
    """Create or continue the study and run `trials` trials in `workers` processes; returns an exit status."""
    quiet()
    study = open_study(sweep, create=True)
    journal, ctx = is_journal(sweep.storage), get_context("spawn")
    budget = Budget(trials, timeout, ctx)
    budget.recover(study, journal)  # trials left RUNNING by an earlier call whose process died
    if workers <= 1:
        try:
            work(sweep, budget, len(study.trials))
        except KeyboardInterrupt:
            return 130
        return 0
    gpus, threads = visible_gpus(), max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker_process, name=f"nanolab-sweep-{i}", args=(
        sweep, budget, len(study.trials) + i, gpus[i % len(gpus)] if len(gpus) > 1 else None, threads))
        for i in range(workers)]
    for proc in procs:
        proc.start()
    running = list(procs)
    while running:
        try:
            wait([proc.sentinel for proc in running])
        except KeyboardInterrupt:  # the workers got the signal too: they end their trials and exit
            continue
        for proc in [p for p in running if not p.is_alive()]:
            running.remove(proc)  # reaped: its pid is gone, so its trial can be recovered
            if proc.exitcode not in (0, 2, 130, -signal.SIGINT):  # -SIGINT: Ctrl-C as the worker was exiting
                print(f"nanolab: sweep {proc.name} ended with exit status {proc.exitcode}", file=sys.stderr)
                budget.recover(study, journal)
    codes = [130 if proc.exitcode == -signal.SIGINT else proc.exitcode for proc in procs]
    return next((c for c in (130, 2) if c in codes), 1 if any(codes) else 0)


# ----------------------------------------------------------------------------- results


def ranked(study: optuna.Study, sweep: Sweep) -> list[FrozenTrial]:
    """Completed trials best first; for several objectives the Pareto front, ordered by the first objective."""
    sign = 1 if sweep.objectives[0].direction == "minimize" else -1
    pool = study.best_trials if len(sweep.objectives) > 1 else study.get_trials(states=(TrialState.COMPLETE,))
    return sorted(pool, key=lambda t: sign * t.values[0])


def format_table(study: optuna.Study, sweep: Sweep, limit: int = 10) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    lines = [f"sweep {sweep.name}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
             f", storage {safe(sweep.storage)}"]
    best = ranked(study, sweep)
    multi = len(sweep.objectives) > 1
    rows = [{"trial": t.number, **dict(zip((o.metric for o in sweep.objectives), t.values)), **t.params}
            for t in (best if multi else best[:limit])]
    if rows:
        goal = ", ".join(f"{o.direction} {o.metric}" for o in sweep.objectives)
        lines.append(f"{'Pareto front' if multi else f'top {len(rows)} trials'} ({goal}):")
        lines.append(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    else:
        lines.append("no completed trial yet")
    for t in [t for t in trials if t.state == TrialState.FAIL][-5:]:
        lines.append(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded (worker lost)')}")
    return "\n".join(lines)


def write_results(sweep: Sweep) -> str:
    """trials.csv, best.yaml (a full spec: `nanolab run best.yaml`) and table.txt in the sweep folder; the table."""
    study = open_study(sweep)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(sweep.folder / "trials.csv", index=False)
    best = ranked(study, sweep)
    if best:
        trial = best[0]
        values = ", ".join(f"{o.metric} {v:.4g}" for o, v in zip(sweep.objectives, trial.values))
        header = f"# best trial {trial.number} of sweep {sweep.name} ({values}), from {sweep.path}\n"
        write_text(sweep.folder / "best.yaml", header + dump_spec(sweep.config(trial.params)))
    table = format_table(study, sweep)
    write_text(sweep.folder / "table.txt", table + "\n")
    return table


def status(sweep: Sweep) -> str:
    """The table of the study as it stands; nothing runs."""
    quiet()
    if is_journal(sweep.storage) and not Path(sweep.storage).is_file():
        return f"sweep {sweep.name}: no trial yet (no {sweep.storage})"
    try:
        return format_table(open_study(sweep), sweep)
    except KeyError:
        return f"sweep {sweep.name}: no trial yet in {safe(sweep.storage)}"


def sweep_command(args) -> int:
    sweep = load_sweep(args.sweep_file, tuple(args.set), args.storage)
    if args.status:
        print(status(sweep))
        return 0
    if args.workers < 1 or (args.trials is not None and args.trials < 1):
        raise NanolabError("--workers and --trials must be >= 1")
    trials = args.trials or sweep.trials
    print(f"sweep {sweep.name}: {trials} trials on {args.workers} worker(s), storage {safe(sweep.storage)}", flush=True)
    code = optimize(sweep, trials, args.workers, args.timeout)
    print(write_results(sweep))
    print(f"results: {sweep.folder} (trials.csv, best.yaml, table.txt)")
    return code
