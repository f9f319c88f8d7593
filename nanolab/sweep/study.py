"""The study: the one owner of Optuna in nanolab (samplers, pruners, the study, its trials, its record of the plan).

The sweep's main process asks the study for trials; a worker process (or the main process, with one worker)
runs a trial and tells the study how it ended. Seeds: trial N's parameters come from the sampler seeded with
`seed + N`. Trial numbers are unique in a storage, so workers and machines started together propose different
parameters; and a rerun from the same journal gives trial N the same parameters wherever the sampler's inputs
are the same: always for random, grid and qmc; for tpe and cmaes when the earlier trials ended in the same order
(one worker).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from nanolab.errors import SpecError
from nanolab.runfolder import RunFolder
from nanolab.plan import changed_message, fingerprint
from nanolab.sweep.storage import StorageError, create_or_load_study, is_journal, open_storage, safe

S = optuna.samplers
SAMPLERS = {"tpe": S.TPESampler, "random": S.RandomSampler, "grid": S.GridSampler, "cmaes": S.CmaEsSampler,
            "qmc": S.QMCSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
MAX_RETRIES = 1  # a trial whose worker died runs once more; a trial stopped by Ctrl-C always resumes
# metric names, heartbeats and their retry callback are "experimental" in Optuna 5, and stable enough for us
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# ask/tell outside `optimize` is how a sweeper and its launcher split the work; the heartbeat is ours to beat
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def quiet() -> None:
    """One line per trial is ours to print: Optuna's INFO lines go."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


# ----------------------------------------------------------------------------- samplers and pruners


def algorithm_names(kind: str) -> list[str]:
    return list(SAMPLERS if kind == "sampler" else PRUNERS)


def algorithm_options(kind: str, name: str) -> list[str]:
    table = SAMPLERS if kind == "sampler" else PRUNERS
    return [p for p in inspect.signature(table[name]).parameters if p != "search_space"]


def algorithm_problem(sweep, kind: str) -> str | None:
    """Why the sweep's sampler or pruner cannot be built, or None."""
    try:
        make_sampler(sweep, 0) if kind == "sampler" else make_pruner(sweep)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def make_sampler(sweep, seed: int | None) -> optuna.samplers.BaseSampler:
    options = dict(sweep.sampler.options)
    if seed is not None:
        options["seed"] = seed
    if sweep.sampler.name == "grid":
        ranges = [d.key for d in sweep.space if d.kind == "float"]
        if ranges:
            raise ValueError(f"grid needs a choice or an int range for every space key; {ranges[0]} is a float range")
        options["search_space"] = {d.key: d.values() if d.kind == "choice" else
                                   list(range(d.low, d.high + 1, d.step or 1)) for d in sweep.space}
    return SAMPLERS[sweep.sampler.name](**options)


def make_pruner(sweep) -> optuna.pruners.BasePruner:
    return PRUNERS[sweep.pruner.name](**sweep.pruner.options)


class TrialSeeded(optuna.samplers.BaseSampler):
    """The sweep's sampler, seeded with `seed + trial.number` for each trial (see the module docstring); the grid
    sampler with `seed` for every trial."""

    def __init__(self, sweep):
        self.sweep, self.seed = sweep, sweep.sampler.options.get("seed")
        self.current: tuple[int, optuna.samplers.BaseSampler] | None = None

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        if self.current is None or self.current[0] != trial.number:
            # grid: one seed for all, since the seed shuffles the grid and a trial's grid id names a point in it
            per_trial = 0 if self.sweep.sampler.name == "grid" else trial.number
            seed = None if self.seed is None else self.seed + per_trial
            self.current = (trial.number, make_sampler(self.sweep, seed))
        return self.current[1]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        if self.sweep.sampler.name != "grid":  # grid's would stop an optimize loop we do not run: see exhausted()
            self._for(trial).after_trial(study, trial, state, values)

    def exhausted(self, study: optuna.Study) -> bool:
        return self.sweep.sampler.name == "grid" and make_sampler(self.sweep, 0).is_exhausted(study)


# ----------------------------------------------------------------------------- the fingerprint


def same_sweep(stored: dict, resolved: dict) -> bool:
    """Whether a study's stored fingerprint (and resolved sweep) is the sweep `resolved`, up to keys that do not
    change what a trial trains: the sample length (samples draw from their own generator; plans turned it off by
    default after studies had begun)."""
    if "resolved" not in stored:
        return stored["fingerprint"] == fingerprint(resolved)

    def trained(sweep: dict) -> dict:
        return {**sweep, "experiment": {**sweep["experiment"], "train": {
            k: v for k, v in sweep["experiment"].get("train", {}).items() if k != "sample_tokens"}}}
    return fingerprint(trained(stored["resolved"])) == fingerprint(trained(resolved))


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Ticket:
    """A trial the main process asked for: a worker runs it by id."""

    number: int
    trial_id: int
    params: dict
    origin: int  # the trial whose run folder this one continues (itself, unless resumed or retried)


class SweepStudy:
    def __init__(self, sweep, study: optuna.Study):
        self.sweep, self.study = sweep, study
        self.folders: dict[int, RunFolder] = {}  # trial number -> run folder, of the trials this worker runs

    @classmethod
    def create(cls, sweep) -> SweepStudy:
        """Create the study, or load it and check it is the same sweep (directions, fingerprint)."""
        quiet()
        directions = [o.direction for o in sweep.objectives]
        study = create_or_load_study(sweep.storage, sweep.name, directions, sampler=TrialSeeded(sweep),
                                     pruner=make_pruner(sweep))
        where = f"study {sweep.name!r} in {safe(sweep.storage)}"
        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            raise SpecError(f"{sweep.path}: objective: {where} optimizes {stored}, this file {directions}; give the "
                            "sweep a new `name` to start a new study")
        if study.metric_names is None:
            study.set_metric_names([o.metric for o in sweep.objectives])
        resolved = json.loads(json.dumps(sweep.resolved(), default=str))
        if "fingerprint" not in study.user_attrs:
            study.set_user_attr("fingerprint", fingerprint(resolved))
            study.set_user_attr("resolved", resolved)
        elif not same_sweep(study.user_attrs, resolved):
            raise SpecError(changed_message(sweep.path, where, study.user_attrs.get("resolved", {}), resolved))
        return cls(sweep, study)

    @classmethod
    def load(cls, sweep) -> SweepStudy | None:
        quiet()
        if is_journal(sweep.storage) and not os.path.isfile(sweep.storage):
            return None
        try:
            study = optuna.load_study(study_name=sweep.name, storage=open_storage(sweep.storage),
                                      sampler=TrialSeeded(sweep), pruner=make_pruner(sweep))
        except KeyError:
            return None
        return cls(sweep, study)

    # -- the main process
    def waiting(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def running(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def exhausted(self) -> bool:
        return self.study.sampler.exhausted(self.study)

    def ask(self, owned: bool = True) -> Ticket:
        """A trial to run: a waiting one (resumed or retried) first, else new parameters from the sampler. `owned`:
        it runs in this process or a child, so it is this process's until its worker says otherwise (a trial
        queued in Slurm is nobody's until its job starts: no later call may take it for dead)."""
        trial = self.study.ask()
        params = {d.key: _suggest(d, trial) for d in self.sweep.space}
        origin = trial.user_attrs.get("origin", trial.number)
        trial.set_user_attr("origin", origin)
        if owned:
            trial.set_user_attr("worker", _me())
        trial.set_user_attr("run_dir", str(self.sweep.run_folder(origin).path.resolve()))
        if owned and self._heartbeat_interval():  # beat once now: a trial that never beat is never found stale
            self.study._storage.record_heartbeat(trial._trial_id)
        return Ticket(trial.number, trial._trial_id, params, origin)

    def recover(self) -> list[str]:
        """Fail and retry the RUNNING trials whose worker died: on this host by process id, elsewhere by
        heartbeat (RDB storages). Returns a line for each."""
        optuna.storages.fail_stale_trials(self.study)
        lines = []
        for frozen in self.study.get_trials(states=(TrialState.RUNNING,)):
            host, _, pid = frozen.user_attrs.get("worker", "").rpartition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lines.append(self.fail_dead(frozen.number, f"worker process {pid} died"))
        return [line for line in lines if line]

    def fail_dead(self, number: int, reason: str) -> str | None:
        """A RUNNING trial whose process is gone: FAIL with the reason, its run folder failed, retried once."""
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state != TrialState.RUNNING:
            return None
        self._fail(frozen, reason)
        if "run_dir" in frozen.user_attrs:
            RunFolder(frozen.user_attrs["run_dir"]).mark_failed(reason)
        retried = frozen.user_attrs.get("retries", 0) < MAX_RETRIES
        if retried:
            self._requeue(frozen, retries=frozen.user_attrs.get("retries", 0) + 1)
        return f"trial {number}: FAIL, {reason}" + ("; retried" if retried else "")

    # -- a worker
    def trial(self, trial_id: int) -> optuna.Trial:
        trial = optuna.Trial(self.study, trial_id)
        trial.set_user_attr("worker", _me())
        self.folders[trial.number] = self.sweep.run_folder(trial.user_attrs.get("origin", trial.number))
        return trial

    @contextmanager
    def heartbeat(self, trial_id: int) -> Iterator[None]:
        """RDB storages fail a trial whose heartbeat stops (its machine died); this worker keeps it beating."""
        storage, stop, interval = self.study._storage, threading.Event(), self._heartbeat_interval()
        if interval:
            def beat():
                while not stop.is_set():
                    with contextlib.suppress(StorageError):  # the trial's own next call to the storage says so
                        storage.record_heartbeat(trial_id)
                    stop.wait(interval)

            threading.Thread(target=beat, daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    def _heartbeat_interval(self) -> int | None:
        storage = self.study._storage
        return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None

    def complete(self, number: int, values: list[float]) -> None:
        with self._telling(number):
            self.study.tell(number, values[0] if len(values) == 1 else values)

    def pruned(self, number: int) -> None:
        with self._telling(number):
            self.study.tell(number, state=TrialState.PRUNED)

    def fail(self, number: int, reason: str, resume: bool = False) -> None:
        """FAIL with the reason; with `resume`, a waiting copy continues the run folder on the next call."""
        with self._telling(number):
            frozen = self.study.get_trials(deepcopy=False)[number]
            self._fail(frozen, reason)
            if resume:
                self._requeue(frozen, retries=frozen.user_attrs.get("retries", 0))

    def set_attrs(self, number: int, **attrs: Any) -> None:
        with self._telling(number):
            trial_id = self.study.get_trials(deepcopy=False)[number]._trial_id
            for key, value in attrs.items():
                self.study._storage.set_trial_user_attr(trial_id, key, value)

    @contextmanager
    def _telling(self, number: int) -> Iterator[None]:
        """A trial's end that its lost storage cannot take is recorded in its run folder (meta.json's `study`)."""
        try:
            yield
        except StorageError as exc:
            folder = self.folders.get(number)
            if folder is not None and folder.meta_path.is_file():
                folder.update_meta(study=f"not told how this run ended: {exc}")
            raise

    def _fail(self, frozen: FrozenTrial, reason: str) -> None:
        self.study._storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
        self.study.tell(frozen.number, state=TrialState.FAIL)

    def _requeue(self, frozen: FrozenTrial, retries: int) -> None:
        attrs = {k: v for k, v in frozen.user_attrs.items() if k not in ("fail_reason", "worker")}
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs={**attrs, "resumes": frozen.number, "retries": retries},
            # as enqueue_trial marks a trial: else the grid sampler gives it (and so uses up) another grid point
            system_attrs={"fixed_params": dict(frozen.params)}))

    # -- results
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def started(self) -> int:
        """Trials begun so far, a resumed or retried trial counted once with the trial it continues."""
        return len({t.user_attrs.get("origin", t.number) for t in self.trials()})

    def ranked(self) -> list[FrozenTrial]:
        """Completed trials best first; for several objectives the Pareto front, ordered by the first objective."""
        sign = 1 if self.sweep.objectives[0].direction == "minimize" else -1
        multi = len(self.sweep.objectives) > 1
        pool = self.study.best_trials if multi else self.study.get_trials(states=(TrialState.COMPLETE,))
        return sorted(pool, key=lambda t: sign * t.values[0])

    def dataframe(self):
        return self.study.trials_dataframe()


def _suggest(dim, trial: optuna.Trial) -> Any:
    if dim.kind == "float":
        return trial.suggest_float(dim.key, dim.low, dim.high, log=dim.log, step=dim.step)
    if dim.kind == "int":
        return trial.suggest_int(dim.key, dim.low, dim.high, step=dim.step or 1, log=dim.log)
    return trial.suggest_categorical(dim.key, dim.choices)


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True
