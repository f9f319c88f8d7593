"""A tuned sequential ablation (a `tune:` block and seeds: {min, max, step}): each variant's study runs once,
before the first round; only the seeds are sequential, and every round's runs train at the study's best trial. A
rerun after the last look, or after kill -9 between rounds, neither tunes nor decides again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nanolab.ablate import load_ablation
from nanolab.sweep import SweepStudy, params_text

from helpers import cli, tiny_yaml

pytestmark = [pytest.mark.timeout(900), pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

EXPERIMENT = tiny_yaml(seed=1, warmup_iters=0, sample_tokens=0)
TUNED_SEQUENTIAL = """\
name: seq
experiment: tiny.yaml
overrides: {{train.max_iters: {steps}, train.eval_interval: {steps}}}
grid: {{model.activation: [gelu, relu]}}
seeds: {{min: 2, max: 3, step: 1}}
decide: {{fwer: 0.05}}
tune:
  space: {{train.lr: {{choice: [1.0e-3, 3.0e-2]}}}}
  sampler: grid
  trials: {trials}
  overrides: {{train.max_iters: 5}}
"""
VARIANTS = ("activation=gelu", "activation=relu")
RUNS = [f"{v}-s{s}" for v in VARIANTS for s in (1, 2, 3)]


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    return tmp_path


def spec(work: Path, trials: int = 2, steps: int = 10) -> Path:
    path = work / "seq.yaml"
    path.write_text(TUNED_SEQUENTIAL.format(trials=trials, steps=steps))
    return path



def meta(work: Path, run_id: str) -> dict:
    return json.loads((work / "runs/seq" / run_id / "meta.json").read_text())


def trials(path: Path, variant: str) -> list[tuple[int, str, float, str]]:
    """The variant's study as (number, state, train.lr, start time) per trial."""
    study = SweepStudy.load(load_ablation(path).tuning[variant])
    return [(t.number, t.state.name, t.params["train.lr"], str(t.datetime_start)) for t in study.trials()]


def best(path: Path, variant: str) -> dict:
    return dict(SweepStudy.load(load_ablation(path).tuning[variant]).ranked()[0].params)


def record(work: Path) -> bytes:
    return (work / "runs/seq/decisions.json").read_bytes()


def lines_starting(stdout: str, prefix: str) -> list[int]:
    return [i for i, line in enumerate(stdout.splitlines()) if line.startswith(prefix)]


@pytest.mark.parametrize("count", [2, 3], ids=["trials-as-the-grid", "trials-beyond-the-grid"])
def test_each_study_runs_once_and_every_round_trains_at_its_best_trial(work, count):
    path = spec(work, trials=count)
    out = cli("ablate", str(path))
    assert out.returncode == 0, out.stderr
    [first_look] = lines_starting(out.stdout, "ablation seq: look at 2 seeds (+4 runs): activation=relu ")
    assert lines_starting(out.stdout, "ablation seq: look at 3 seeds (+2 runs): activation=relu ") != []
    for variant in VARIANTS:
        # its study is opened and run in the first round only (a 2-point grid has 2 trials however many are asked)
        assert len(lines_starting(out.stdout, f"tuning {variant}: {count} trials of train.lr, 0 begun before")) == 1
        assert lines_starting(out.stdout, f"tuning {variant}:")[0] < first_look
        assert sorted((state, lr) for _, state, lr, _ in trials(path, variant)) == [("COMPLETE", 1.0e-3),
                                                                                   ("COMPLETE", 3.0e-2)]
        assert sorted(p.name for p in (work / "runs" / f"seq-tune-{variant}").iterdir()) == ["trial-0", "trial-1"]
        assert [meta(work, f"{variant}-s{s}")["tuned"] for s in (1, 2, 3)] == [best(path, variant)] * 3
    reopened = [out.stdout.splitlines()[i] for i in lines_starting(out.stdout, "tuning ") if i > first_look]
    assert reopened == []  # no study is opened again in a later round
    looks = json.loads(record(work))["looks"]
    assert [(look["seeds"], look["runs"], list(look["variants"])) for look in looks] == [
        (2, 4, ["activation=relu"]), (3, 2, ["activation=relu"])]
    assert looks[0]["variants"]["activation=relu"]["decision"] == "undecided"  # |t| > 32,000 at 2 seeds

    decided, studies = record(work), {v: trials(path, v) for v in VARIANTS}
    started = {run_id: meta(work, run_id)["start_time"] for run_id in RUNS}
    again = cli("ablate", str(path))
    assert again.returncode == 0, again.stderr
    assert lines_starting(again.stdout, "ablation seq: look at ") == [0, 1] and again.stdout.count("(recorded)") == 2
    assert "round at" not in again.stdout and not lines_starting(again.stdout, "tun")  # tuning, tuned
    assert record(work) == decided and {v: trials(path, v) for v in VARIANTS} == studies
    assert {run_id: meta(work, run_id)["start_time"] for run_id in RUNS} == started


def test_kill_9_in_the_second_round_then_rerun_neither_tunes_nor_decides_again(work):
    path = spec(work, steps=100)  # a second-round run lasts long enough to be killed before it ends
    child = subprocess.Popen([sys.executable, "-m", "nanolab", "ablate", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
    said = []
    for line in child.stdout:  # the first look is recorded and the second round's first run has begun
        said.append(line)
        if line.startswith("activation=gelu-s3: started"):
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert any(line.startswith("ablation seq: look at 2 seeds") for line in said), "".join(said)
    first, studies = json.loads(record(work))["looks"], {v: trials(path, v) for v in VARIANTS}
    assert [look["seeds"] for look in first] == [2]
    started = {f"{v}-s{s}": meta(work, f"{v}-s{s}")["start_time"] for v in VARIANTS for s in (1, 2)}

    out = cli("ablate", str(path))
    assert out.returncode == 0, out.stderr
    assert "ablation seq: look at 2 seeds (+4 runs): activation=relu undecided (recorded)" in out.stdout
    assert "round at 3 seeds: 6 runs, 4 already done, 2 to run" in out.stdout
    assert not lines_starting(out.stdout, "tuning ")  # the values are read from the finished studies
    for variant in VARIANTS:
        assert f"tuned {variant}: {params_text(best(path, variant))} (" in out.stdout
        assert trials(path, variant) == studies[variant]
        assert [meta(work, f"{variant}-s{s}")["tuned"] for s in (1, 2, 3)] == [best(path, variant)] * 3
    looks = json.loads(record(work))["looks"]
    assert looks[0] == first[0] and [look["seeds"] for look in looks] == [2, 3]
    assert {f"{v}-s{s}": meta(work, f"{v}-s{s}")["start_time"] for v in VARIANTS for s in (1, 2)} == started
