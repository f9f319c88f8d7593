"""Tuned ablations: a study per variant before its seeds run; the W&B groups that keep the two apart; resuming
after a kill -9 at any point without redoing a finished study or run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SWEEP_EXPERIMENT, wait_for

from nanolab.ablate import ablate, load_ablation
from nanolab.analysis import load_runs
from nanolab.cli import main
from nanolab.runfolder import RunFolder, RunStore, runs_root
from nanolab.sweep import SweepStudy

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

LRS = [1.0e-3, 3.0e-2]


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))


def tuned_file(folder: Path, steps: int = 20, tune_steps: int = 10, checkpoint: int = 10) -> Path:
    (folder / "tiny.yaml").write_text(SWEEP_EXPERIMENT)
    path = folder / "tuned.yaml"
    path.write_text(f"""\
experiment: tiny.yaml
overrides: {{train.max_iters: {steps}, train.checkpoint_interval: {checkpoint}}}
grid: {{model.activation: [relu, swiglu]}}
seeds: [1, 2]
tune:
  space: {{train.lr: {{choice: {LRS}}}}}
  sampler: grid
  trials: 2
  overrides: {{train.max_iters: {tune_steps}}}
""")
    return path


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def study(path: Path, variant: str) -> SweepStudy:
    return SweepStudy.load(load_ablation(path).tuning[variant])


def test_each_variant_is_tuned_then_its_seeds_run_at_its_best_value(tmp_path):
    path = tuned_file(tmp_path)
    ablation, results = ablate(path)
    assert results == dict.fromkeys(["activation=relu-s1", "activation=relu-s2", "activation=swiglu-s1",
                                     "activation=swiglu-s2"], "finished")
    for variant in ("activation=relu", "activation=swiglu"):
        trials = study(path, variant).trials()
        assert sorted(t.params["train.lr"] for t in trials) == LRS and {t.state.name for t in trials} == {"COMPLETE"}
        best = min(trials, key=lambda t: t.values[0]).params
        for seed in (1, 2):
            final = RunStore().folder("tuned", f"{variant}-s{seed}")
            assert meta(final.path)["tuned"] == best
            assert final.read_config()["train"]["lr"] == best["train.lr"]
            assert (meta(final.path)["group"], meta(final.path)["job_type"]) == ("tuned", "ablate")
            assert final.read_config()["train"]["max_iters"] == 20  # the tune block's budget is the studies' only
        trial = RunFolder(runs_root() / f"tuned-tune-{variant}" / "trial-0")
        assert (meta(trial.path)["group"], meta(trial.path)["job_type"]) == ("tuned-tune", "tune")
        assert trial.read_config()["train"]["max_iters"] == 10 and trial.read_config()["seed"] == 1
        assert (runs_root() / "sweeps" / f"tuned-tune-{variant}" / "best.yaml").is_file()
    assert len(load_runs(runs_root(), group="tuned")) == 4  # the final runs only
    assert len(load_runs(runs_root(), group="tuned-tune")) == 4  # 2 variants x 2 trials
    assert_report_shows_each_study(path, tmp_path / "report")


def assert_report_shows_each_study(path: Path, out: Path):
    """`nanolab report`'s table of what each study saw: a row per variant, a column per lr, each trial's objective
    as its study recorded it, the variant's best in bold."""
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## What each study saw" in text
    assert f"| variant | {LRS[0]:g} | {LRS[1]:g} |" in text
    for variant in ("activation=relu", "activation=swiglu"):
        values = {t.params["train.lr"]: t.values[0] for t in study(path, variant).trials()}
        best = min(values, key=values.get)
        cells = [f"**{values[lr]:.4f}**" if lr == best else f"{values[lr]:.4f}" for lr in LRS]
        assert f"| {variant} | {' | '.join(cells)} |" in text, text


def test_two_studies_trials_of_the_same_values_are_two_job_records(tmp_path):
    """The studies of a tuned ablation share its launcher, which records a job per label: a trial's label names its
    variant, so trial 0 of each study at the same lr are two records, not one overwritten."""
    (tmp_path / "tiny.yaml").write_text(SWEEP_EXPERIMENT)
    path = tmp_path / "tuned.yaml"
    path.write_text("""\
experiment: tiny.yaml
overrides: {train.max_iters: 10}
grid: {model.activation: [relu, swiglu]}
seeds: [1]
tune: {space: {train.lr: {choice: [1.0e-3]}}, sampler: grid, trials: 1}
""")
    assert main(["ablate", str(path), "--launcher", "submitit-local"]) == 0
    book = json.loads((runs_root() / "tuned" / ".submitit" / "jobs.json").read_text())
    assert sorted(book) == ["activation=relu trial 0 [train.lr=0.001]", "activation=relu-s1",
                            "activation=swiglu trial 0 [train.lr=0.001]", "activation=swiglu-s1"]
    assert len(set(book.values())) == 4


def test_a_tuned_key_may_not_also_be_a_grid_key_or_set(tmp_path, capsys):
    path = tuned_file(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("grid: {model.activation: [relu, swiglu]}", "grid: {train.lr: [0.001, 0.002]}"))
    assert main(["ablate", str(path)]) == 2
    assert f"{path}: tune.space.train.lr: the ablation varies this key; tune other keys" in capsys.readouterr().err
    path.write_text(text.replace("{choice: [0.001, 0.03]}", "{choice: [0.001, 'x']}"))
    assert main(["ablate", str(path)]) == 2
    assert f"{path}: tune.space: train.lr = 'x': expected a number" in capsys.readouterr().err
    path.write_text(text)
    assert main(["ablate", str(path), "--set", "train.lr=0.002"]) == 2
    assert "train.lr is swept by `tune.space:`" in capsys.readouterr().err
    path.write_text(text.replace("sampler: grid", "sampler: grdi"))
    assert main(["ablate", str(path)]) == 2
    assert "tune.sampler = 'grdi': unknown sampler" in capsys.readouterr().err


def started(run_dirs: list[Path]) -> dict[str, str]:
    """<group>/<run id> -> start time (two studies each have a trial-0)."""
    return {f"{d.parent.name}/{d.name}": meta(d)["start_time"] for d in run_dirs if (d / "meta.json").is_file()}


@pytest.mark.parametrize("kill_during", ["tuning", "a study's last trial", "final runs"])
def test_a_tuned_ablation_killed_at_any_point_resumes_without_redoing_studies_or_runs(tmp_path, kill_during):
    path = tuned_file(tmp_path, steps=400, tune_steps=400, checkpoint=10)
    ablation = subprocess.Popen([sys.executable, "-m", "nanolab", "ablate", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    victim = {"tuning": runs_root() / "tuned-tune-activation=swiglu" / "trial-0",
              "a study's last trial": runs_root() / "tuned-tune-activation=relu" / "trial-1",  # all trials begun
              "final runs": RunStore().folder("tuned", "activation=relu-s2").path}[kill_during]
    # a bound, not a clock: on a loaded machine the victim may start minutes later
    wait_for(lambda: (victim / "ckpt" / "last.pt").is_file(), timeout=900, what=f"{victim} to checkpoint")
    ablation.send_signal(signal.SIGKILL)
    ablation.communicate(timeout=60)
    every_run = lambda: [d for name in ("tuned", "tuned-tune-activation=relu", "tuned-tune-activation=swiglu")
                         for d in sorted((runs_root() / name).glob("*")) if d.is_dir()]
    before = {f"{d.parent.name}/{d.name}": RunFolder(d).status for d in every_run()}
    times = started(every_run())

    _, results = ablate(path)

    assert set(results.values()) == {"finished"}
    for variant in ("activation=relu", "activation=swiglu"):  # each grid value tried once, no trial beyond
        trials = study(path, variant).trials()
        assert study(path, variant).started() == 2
        assert sorted({t.params["train.lr"] for t in trials if t.state.name == "COMPLETE"}) == LRS
        best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0]).params
        assert [meta(RunStore().folder("tuned", f"{variant}-s{s}").path)["tuned"] for s in (1, 2)] == [best, best]
    after = every_run()
    # a trial whose process died is retried from the start, as in sweeps (its folder kept as .attempt1); a killed
    # final run continues from its checkpoint
    retried = [] if kill_during == "final runs" else [f"{victim.name}.attempt1"]
    assert [d.name for d in after if ".attempt" in d.name] == retried
    assert {d.name: RunFolder(d).status for d in after} == {d.name: "failed" if ".attempt" in d.name else "finished"
                                                            for d in after}
    assert len(after) == 2 + 2 + 4 + len(retried)
    for name, status in before.items():  # a run that had finished was not run again
        if status == "finished":
            assert started(after)[name] == times[name]
    if kill_during == "final runs":  # it continued in its own folder
        assert started(after)[f"tuned/{victim.name}"] == times[f"tuned/{victim.name}"]
