"""A plan stopped from outside: Ctrl-C to an ablation with one worker and with two, SIGTERM to a sweep. Each
stops with 130 or 143 and one line saying how to continue, its running runs saved; the next call continues them."""

from __future__ import annotations

import json
import signal

import pytest
from helpers import LR, start_cli, sweep_file, tiny_yaml, wait_for

from nanolab.runfolder import RunStore

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"), pytest.mark.timeout(1800)]

STEPS = 2000  # long enough to be stopped midway (two workers start seconds apart), short enough to finish again
LONG = (f"overrides: {{train.max_iters: {STEPS}, train.eval_interval: {STEPS}, train.checkpoint_interval: 20, "
        "train.log_interval: 20}\n")
CELLS = ["activation=relu-s1", "activation=gelu-s1"]


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))


def meta(name: str, run_id: str) -> dict:
    return json.loads((RunStore().folder(name, run_id).path / "meta.json").read_text())


def train_steps(name: str, run_id: str) -> list[int]:
    return [row["step"] for row in RunStore().folder(name, run_id).metrics() if "train/loss" in row]


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_the_ablation_its_running_cells_save_and_the_next_call_continues_them(tmp_path, workers):
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    path = tmp_path / "stop.yaml"
    path.write_text(f"name: stop\nexperiment: tiny.yaml\n{LONG}grid: {{model.activation: [relu, gelu]}}\nseeds: [1]\n")
    running = CELLS[:workers]
    child = start_cli("ablate", str(path), "--workers", str(workers))
    wait_for(lambda: all(RunStore().folder("stop", r).ckpt("last").is_file() for r in running), timeout=240,
             what="the running cells' checkpoints")
    child.send_signal(signal.SIGINT)  # to the command alone, not its process group: it passes the signal on
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"nanolab: ablation stop stopped by SIGINT; its interrupted runs continue "
                                            f"from their checkpoints with: nanolab ablate {path} --workers {workers}")
    assert "share every" not in out + err  # no comparison of a half-run ablation
    for run_id in running:
        assert (meta("stop", run_id)["status"], meta("stop", run_id)["reason"]) == ("interrupted", "SIGINT")
    stopped = {run_id: train_steps("stop", run_id) for run_id in running}

    again = start_cli("ablate", str(path), "--workers", str(workers))
    out, err = again.communicate(timeout=1200)
    assert again.returncode == 0, err
    for run_id in CELLS:
        assert meta("stop", run_id)["status"] == "finished"
        assert train_steps("stop", run_id) == list(range(20, STEPS + 1, 20))  # every step once
    for run_id, steps in stopped.items():  # continued in its own folder, from its checkpoint
        assert steps and train_steps("stop", run_id)[:len(steps)] == steps
    assert not [p.name for p in (tmp_path / "runs/stop").iterdir() if ".attempt" in p.name]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_a_sweep_in_one_line_and_the_next_call_continues_its_trials(tmp_path, workers):
    path = sweep_file(tmp_path, "term", LR + LONG + f"trials: {workers}\n")
    child = start_cli("sweep", str(path), "--workers", str(workers))
    trials = [f"trial-{n}" for n in range(workers)]
    wait_for(lambda: all(RunStore().folder("term", t).ckpt("last").is_file() for t in trials), timeout=240,
             what="the trials' checkpoints")
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert err.strip().splitlines()[-1] == (f"nanolab: sweep term stopped by SIGTERM; its interrupted trials continue "
                                            f"from their checkpoints with: nanolab sweep {path} --workers {workers}")
    assert "Traceback" not in err
    assert {meta("term", t)["status"] for t in trials} == {"interrupted"}

    again = start_cli("sweep", str(path), "--workers", str(workers), "--trials", "1")
    out, err = again.communicate(timeout=1200)
    assert again.returncode == 0, err
    for t in trials:  # each continued in its own folder
        assert meta("term", t)["status"] == "finished" and train_steps("term", t) == list(range(20, STEPS + 1, 20))
