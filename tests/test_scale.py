"""Scaling ladders (`scale:` in an ablation file): every variant at every size x budget is one cell of the plan,
checked in one line when the block is wrong; a ladder killed with SIGKILL resumes without redoing finished points."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import tiny_yaml, wait_for

from nanolab.ablate import load_ablation
from nanolab.cli import main
from nanolab.runfolder import RunStore

pytestmark = pytest.mark.timeout(900)
LADDER = "scale: {sizes: [[16, 1], [32, 1]], budgets: [4.0e+7, 3.0e+8]}\n"


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())


def ladder_file(tmp_path, body: str, name: str = "ladder"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nexperiment: tiny.yaml\nseeds: [1]\n{body}")
    return path


def test_every_variant_runs_at_every_size_and_budget(tmp_path):
    ablation = load_ablation(ladder_file(tmp_path, "grid: {model.activation: [gelu, relu2]}\n" + LADDER))
    assert [c.run_id for c in ablation.cells] == [
        f"activation={act}_w{w}x1_C{c}-s1" for act in ("gelu", "relu2") for w in (16, 32) for c in ("4e+07", "3e+08")]
    cell = ablation.cells[3]
    assert cell.variant == {"model.activation": "gelu", "model.n_embd": 32, "model.n_layer": 1,
                            "train.max_flops": 3e8}
    cfg = ablation.config(cell)
    assert (cfg.model.n_embd, cfg.model.n_layer, cfg.train.max_flops, cfg.model.activation) == (32, 1, 3e8, "gelu")
    assert ablation.facts()["varied"]["model.n_embd"] == [16, 32]


def test_a_ladder_alone_runs_the_experiment_at_each_point(tmp_path):
    ablation = load_ablation(ladder_file(tmp_path, LADDER))
    assert [c.label for c in ablation.cells] == ["w16x1,C4e+07", "w16x1,C3e+08", "w32x1,C4e+07", "w32x1,C3e+08"]


@pytest.mark.parametrize("body, message", [
    ("scale: {sizes: [[16]], budgets: [1.0e+9]}", "scale.sizes = [[16]]: expected a list of [n_embd, n_layer] pairs "
     "of integers > 0"),
    ("scale: {sizes: [[16, 1]], budgets: [-1]}", "scale.budgets = [-1]: expected a list of train.max_flops values > 0"),
    ("scale: {sizes: [[16, 1], [16, 1]], budgets: [1.0e+9]}", "scale.sizes = [[16, 1], [16, 1]]: expected each "
     "value once"),
    ("scale: {sizes: [[16, 1]], budget: [1.0e+9]}", "scale.budget: unknown key; accepted: sizes, budgets "
     "(did you mean 'budgets'?)"),
    ("scale: {sizes: [[15, 1]], budgets: [1.0e+9]}", "run w15x1_C1e+09-s1: model.n_head = 2: n_embd (15) must be "
     "divisible by n_head"),
    ("grid: {model.n_embd: [16, 32]}\n" + LADDER, "scale: varies model.n_embd, which `n_embd=16` also sets; set it "
     "in one place"),
])
def test_a_bad_scale_block_is_one_line(tmp_path, capsys, body, message):
    path = ladder_file(tmp_path, body + "\n")
    assert main(["ablate", str(path)]) == 2
    assert capsys.readouterr().err == f"nanolab: error: {path}: {message}\n"
    assert not (tmp_path / "runs").exists()


def test_a_ladder_key_in_set_is_refused(tmp_path, capsys):
    path = ladder_file(tmp_path, LADDER)
    assert main(["ablate", str(path), "--set", "train.max_flops=1e9"]) == 2
    assert capsys.readouterr().err == (f"nanolab: error: {path}: scale: varies train.max_flops, which --set "
                                       "train.max_flops also sets; set it in one place\n")


def meta(run_id: str) -> dict:
    return json.loads((RunStore().folder("ladder", run_id).path / "meta.json").read_text())


def train_steps(run_id: str) -> list[int]:
    return [row["step"] for row in RunStore().folder("ladder", run_id).metrics() if "train/loss" in row]


def test_sigkill_then_rerun_does_not_redo_finished_points(tmp_path):
    path = ladder_file(tmp_path, "overrides: {train.checkpoint_interval: 20, train.log_interval: 20, "
                       "train.eval_interval: 100000}\n" + LADDER)
    first, second = "w16x1_C4e+07-s1", "w16x1_C3e+08-s1"
    child = subprocess.Popen([sys.executable, "-m", "nanolab", "ablate", str(path), "--workers", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: RunStore().folder("ladder", second).ckpt("last").is_file(), timeout=300,
             what="the second point's checkpoint")
    os.killpg(child.pid, signal.SIGKILL)  # the command and its worker, as a lost node would
    child.wait()
    done, stopped = meta(first), train_steps(second)
    assert done["status"] == "finished" and meta(second)["status"] == "running"

    again = subprocess.run([sys.executable, "-m", "nanolab", "ablate", str(path), "--workers", "1"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "ablation ladder: 4 runs, 1 already done, 3 to run" in again.stdout
    assert meta(first) == done  # not run again
    steps = train_steps(second)  # continued from its checkpoint: every step once
    assert steps[:len(stopped)] == stopped and steps == sorted(set(steps)) and steps[-1] == meta(second)["steps"]
    assert {meta(c.run_id)["status"] for c in load_ablation(path).cells} == {"finished"}
    assert not [p.name for p in (tmp_path / "runs/ladder").iterdir() if ".attempt" in p.name]


def test_a_ladder_runs_as_slurm_jobs_one_per_point(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # submitit's folders are relative
    path = ladder_file(tmp_path, LADDER)
    flags = ["--launcher", "slurm", "--partition", slurm.partition, "--cpus", "1", "--wait"]
    done = subprocess.run([sys.executable, "-m", "nanolab", "ablate", str(path), *flags], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cells = [c.run_id for c in load_ablation(path).cells]
    assert sorted(re.findall(r"^(\S+): job \d+", done.stdout, flags=re.M)) == sorted(cells)
    assert {meta(run_id)["status"] for run_id in cells} == {"finished"}
    status = subprocess.run([sys.executable, "-m", "nanolab", "status", str(path)], capture_output=True, text=True)
    assert all(re.search(rf"^{re.escape(r)} +\d+ +\S+ +finished", status.stdout, re.M) for r in cells), status.stdout
