"""One trial: a full nanolab run in `$NANOLAB_RUNS/<sweep>/trial-<origin>`, told to the study when it ends.

It runs in a worker process (or in the sweep's own process with one worker) and tells the study itself, then
brings the results files up to date, so that a trial that ends after its sweep process died is recorded too.
"""

from __future__ import annotations

import math

from nanolab.launch import Outcome
from nanolab.plan import start_or_resume
from nanolab.runfolder import RunStore
from nanolab.runner import Stop
from nanolab.sweep.results import write_results
from nanolab.sweep.schema import Sweep
from nanolab.sweep.study import SweepStudy
from nanolab.vocab import VAL_LOSS, RunStatus, objective_value


def run_trial(sweep: Sweep, number: int, trial_id: int, origin: int, *, progress: bool) -> Outcome:
    study = SweepStudy.load(sweep)
    trial = study.trial(trial_id)
    folder = sweep.run_folder(origin)
    if origin == number and folder.path.exists():  # left by an earlier study of this name (another storage)
        aside = RunStore.set_aside(folder)
        print(f"nanolab: {folder.path} belongs to an earlier study {sweep.name!r}; moved to {aside.path}", flush=True)
    params = dict(trial.params)
    meta = {"sweep": sweep.name, "trial": number, "trial_params": params, "swept_keys": [d.key for d in sweep.space],
            "plan_fingerprint": sweep.fingerprint}
    try:
        with study.heartbeat(trial_id):
            result = start_or_resume(sweep.config(params, job_type=sweep.job_type), folder, meta=meta, progress=progress,
                                     on_eval=_pruning_hook(trial) if sweep.prunable else None)
    except Exception as exc:  # a crash fails this trial, not the study
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        study.fail(number, reason)
        write_results(sweep, study)
        return Outcome(RunStatus.FAILED, reason)
    wandb = {k: v for k, v in folder.read_meta().items() if k in ("wandb_id", "wandb_url")}
    if wandb:  # before the trial is told: a finished trial takes no more attributes
        study.set_attrs(number, **wandb)
    outcome = _tell(sweep, study, number, result, folder.metrics())
    write_results(sweep, study)
    return outcome


def _tell(sweep: Sweep, study: SweepStudy, number: int, result, rows: list[dict]) -> Outcome:
    status, reason = RunStatus(result.status), result.reason
    if status is RunStatus.PRUNED:
        study.pruned(number)
        return Outcome(status, reason)
    if status is RunStatus.INTERRUPTED:  # Ctrl-C or SIGTERM: the next call continues it from its checkpoint
        study.fail(number, f"interrupted: {reason}", resume=True)
        return Outcome(status, f"{reason}; the next call resumes it")
    if status is not RunStatus.FINISHED:
        study.fail(number, f"{status}: {reason}".rstrip(": "))
        return Outcome(status, reason)
    values = [objective_value(o.metric, result.summary, rows) for o in sweep.objectives]
    shown = ", ".join(f"{o.metric} {v:.4f}" if v is not None else f"{o.metric} missing"
                      for o, v in zip(sweep.objectives, values))
    bad = next((o.metric for o, v in zip(sweep.objectives, values) if v is None or not math.isfinite(v)), None)
    if bad is not None:
        value = values[[o.metric for o in sweep.objectives].index(bad)]
        study.fail(number, f"objective {bad} is {value}")
        return Outcome(status, f"{shown}; trial FAIL: objective {bad} is {value}")
    study.complete(number, values)
    return Outcome(status, shown, values[0])


def _pruning_hook(trial):
    def on_eval(step: int, metrics: dict) -> None:
        trial.report(metrics[VAL_LOSS], step)
        if trial.should_prune():
            raise Stop(RunStatus.PRUNED, f"at step {step} with {VAL_LOSS} {metrics[VAL_LOSS]:.4f}")

    return on_eval
