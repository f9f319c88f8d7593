"""Compute budgets (train.max_tokens, train.max_flops) and the cumulative counters in every logged row."""

from __future__ import annotations

import math

import pytest
from helpers import tiny_spec

from nanolab import load_spec, run
from nanolab.cli import main
from nanolab.vocab import FLOPS, TOKENS, WALL

TOKENS_PER_STEP = 4 * 16  # the tiny spec: batch 4 x block 16, no accumulation


def test_every_logged_row_carries_tokens_flops_and_wall_time(tmp_path):
    result = run(load_spec(tiny_spec(tmp_path, iters=20, eval=10)), show_progress=False)
    flops_per_token = result.folder.read_meta()["flops_per_token"]
    rows = result.folder.metrics()
    assert rows and all({TOKENS, FLOPS, WALL} <= set(row) for row in rows)
    for row in rows:
        assert row[TOKENS] == row["step"] * TOKENS_PER_STEP
        assert row[FLOPS] == row[TOKENS] * flops_per_token
    walls = [row[WALL] for row in rows]
    assert walls == sorted(walls) and 0 < walls[-1] <= result.summary["wall_time"]
    # the speedrun's clock: the steps alone, less than the wall time by the two evaluations and checkpoints
    evaluations = sum(row["perf/eval_s"] for row in rows if "perf/eval_s" in row)
    assert 0 < result.summary["train_time"] < result.summary["wall_time"] - evaluations


@pytest.mark.parametrize("budget, steps", [("max_tokens=1000", math.ceil(1000 / TOKENS_PER_STEP)),
                                           ("max_tokens=640", 10), ("max_flops=FLOPS", 7)])
def test_a_token_or_flop_budget_sets_the_steps(tmp_path, budget, steps, capsys):
    spec = tiny_spec(tmp_path, iters=500, eval=5)
    if "FLOPS" in budget:  # 7 steps' worth, less a little: rounded up to 7
        probe = run(load_spec(spec, ["train.max_iters=1"]), show_progress=False)
        budget = f"max_flops={(7 * TOKENS_PER_STEP - 1) * probe.folder.read_meta()['flops_per_token']}"
    capsys.readouterr()
    result = run(load_spec(spec, [f"train.{budget}"]), show_progress=False)
    assert result.summary["steps"] == steps and result.folder.metrics()[-1]["step"] == steps
    key, value = budget.split("=")
    assert (f"nanolab: train.{key} = {float(value) if key == 'max_flops' else int(value):,} sets {steps:,} steps; "
            "train.max_iters = 500 is not used") in capsys.readouterr().err  # not dropped silently
    assert result.folder.read_config()["train"]["max_iters"] == steps  # the saved config says what ran
    again = run(load_spec(result.folder.config_path), show_progress=False)  # and repeats it
    assert again.summary["steps"] == steps


def test_one_budget_at_most(tmp_path, capsys):
    spec = tiny_spec(tmp_path)
    assert main(["run", str(spec), "--set", "train.max_tokens=100", "train.max_flops=1e9"]) == 2
    assert "train.max_flops = 1000000000.0: set one budget: train.max_tokens is 100 already (or null)" in \
        capsys.readouterr().err
    assert main(["run", str(spec), "--set", "train.max_tokens=0"]) == 2
    assert "train.max_tokens = 0: must be > 0 (or null for max_iters)" in capsys.readouterr().err
