"""Sequential seeds: the boundaries spend what they promise, the family-wise error holds by simulation (Gaussian
and a permutation null of real runs), and `nanolab ablate` runs rounds, records each look and resumes after
kill -9 without running a seed twice or deciding a look again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, tiny_yaml

from nanolab.rounds import decisions_table
from nanolab.sequential import (SPENDING, Decide, Design, SeedDesign, holm, null_t, paired_t, repeated_p, sequence,
                                t_boundaries)

pytestmark = pytest.mark.timeout(900)  # the end-to-end tests run a dozen tiny runs each
DATA = Path(__file__).parent / "data"
SIMS = 4000  # null ablations per case: the Monte Carlo error of a 5% rate is 0.0034


def false_positive_rate(design: Design, diffs: np.ndarray) -> tuple[float, float]:
    """The share of null ablations with a variant called better or worse, and that share's allowed maximum:
    the stated rate plus two Monte Carlo standard errors."""
    code = sequence(design, diffs).code
    rate = float(((code == 1) | (code == 2)).any(-1).mean())
    fwer = design.decide.fwer
    return rate, fwer + 2 * np.sqrt(fwer * (1 - fwer) / len(diffs))


def gaussian_null(m: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """Per-seed differences of m variants and a shared baseline, all of the same mean, Gaussian seed noise."""
    runs = rng.normal(2.0, 0.01, size=(SIMS, m + 1, seeds))
    return runs[:, 1:] - runs[:, :1]


@pytest.mark.parametrize("spending", ["obf", "pocock"])
def test_the_boundaries_spend_the_function_at_every_look_on_fresh_null_draws(spending):
    looks = (2, 3, 4, 6, 8)
    bounds = t_boundaries(looks, 0.05, spending)
    draws = np.random.default_rng(7).standard_normal((200_000, 8))
    t = np.abs(np.stack([paired_t(draws[:, :n])[2] for n in looks], axis=1))
    first = np.where((t >= bounds).any(1), (t >= bounds).argmax(1), -1)
    spent = np.array([(first[(first >= 0)] <= k).sum() for k in range(len(looks))]) / len(draws)
    expected = SPENDING[spending](np.array(looks) / 8, 0.05)
    np.testing.assert_allclose(spent, expected, atol=4 * np.sqrt(0.05 / len(draws)))
    assert np.all(np.diff(bounds[np.isfinite(bounds)]) < 0) if spending == "obf" else bounds[-1] < bounds[0]


def test_a_t_boundary_at_two_seeds_is_far_out_because_one_degree_of_freedom_has_heavy_tails():
    obf = t_boundaries((2, 3, 10), 0.05, "obf")
    assert obf[0] > 1000 and 2.0 < obf[-1] < 3.0  # a fixed test at 10 seeds would need 2.26
    assert null_t((2, 3, 10)).shape == (2**18, 3)


@pytest.mark.parametrize("m", [1, 3, 6])
@pytest.mark.parametrize("spending,margin,futility", [("obf", None, None), ("pocock", 0.01, None),
                                                      ("pocock", 0.01, 0.6)])
def test_family_wise_false_positives_stay_at_the_stated_rate_on_gaussian_nulls(m, spending, margin, futility):
    design = Design(SeedDesign(2, 10, 1), Decide(spending=spending, margin=margin, futility=futility))
    rate, allowed = false_positive_rate(design, gaussian_null(m, 10, np.random.default_rng(m)))
    assert rate <= allowed, f"{m} variants, {spending}: {rate:.4f} > {allowed:.4f}"


@pytest.mark.parametrize("m,seeds", [(1, 8), (3, 4)])
def test_family_wise_false_positives_stay_at_the_stated_rate_on_real_runs_relabelled(m, seeds):
    """A permutation null: 16 real seeds of one config (tests/data/seed_null.csv), shuffled into a baseline and m
    fake variants, each cell a seed; no variant differs, so every call is a false positive."""
    values = np.loadtxt(DATA / "seed_null.csv", delimiter=",", skiprows=3, usecols=1)
    assert len(values) == 16 and values.std() > 0
    rng = np.random.default_rng(25)
    shuffled = np.stack([rng.permutation(values)[:(m + 1) * seeds] for _ in range(SIMS)]).reshape(SIMS, m + 1, seeds)
    design = Design(SeedDesign(2, seeds, 1), Decide(spending="pocock"))
    rate, allowed = false_positive_rate(design, shuffled[:, 1:] - shuffled[:, :1])
    assert rate <= allowed, f"{m} variants: {rate:.4f} > {allowed:.4f}"


def test_decisions_equal_holm_over_the_repeated_p_values():
    design = Design(SeedDesign(2, 4, 1), Decide(fwer=0.1, spending="pocock"))
    rng = np.random.default_rng(3)
    runs = rng.normal(0, 1, size=(12, 3, 4))
    diffs = runs[:, 1:] - runs[:, :1] + np.array([[-1.5], [0.0]])
    code = sequence(design, diffs).code
    for case in range(len(diffs)):
        p = np.array([repeated_p(design, [paired_t(d[:n])[2] for n in design.seeds.looks]) for d in diffs[case]])
        np.testing.assert_array_equal(code[case] != 0, holm(p) <= 0.1)


def test_a_clear_effect_is_called_at_the_first_look_and_a_zero_spread_null_is_not():
    design = Design(SeedDesign(2, 6, 2), Decide())
    diffs = np.array([[[-0.1, -0.1 + 1e-9, -0.1, -0.1, -0.1, -0.1], [0.05, 0.05 + 1e-9, 0, 0, 0, 0]],
                      [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.01, -0.01, 0.01, -0.01, 0.01, -0.01]]])
    trajectory = sequence(design, diffs)
    assert trajectory.code.tolist() == [[1, 2], [0, 0]]  # better, worse; undecided, undecided
    assert trajectory.look.tolist() == [[0, 0], [-1, -1]]
    assert trajectory.runs.tolist() == [6, 18]  # 3 cells x 2 seeds; 3 cells x 6 seeds


def test_equivalence_within_the_margin_stops_a_variant():
    design = Design(SeedDesign(2, 10, 1), Decide(margin=0.05))
    diffs = np.tile([0.001, -0.001], 5)[None, None, :]
    trajectory = sequence(design, diffs)
    assert trajectory.code.tolist() == [[3]] and 0 < trajectory.look[0, 0] < 9


def test_futility_stops_a_variant_before_equivalence_could_and_only_inside_the_margin():
    diffs = np.array([[[0.004, -0.003, 0.002, -0.004, 0.003, -0.002, 0.004, -0.003, 0.002, -0.004]],
                      [[0.06, 0.04, 0.05, 0.07, 0.03, 0.06, 0.04, 0.05, 0.07, 0.03]]])
    equivalence = sequence(Design(SeedDesign(2, 10, 1), Decide(margin=0.02)), diffs)
    futility = sequence(Design(SeedDesign(2, 10, 1), Decide(margin=0.02, futility=0.4)), diffs)
    assert equivalence.code[0, 0] == 3 and futility.code[0, 0] == 4
    assert futility.look[0, 0] < equivalence.look[0, 0] and futility.runs[0] < equivalence.runs[0]
    assert futility.code[1, 0] == equivalence.code[1, 0] == 2  # a difference beyond the margin is not futile


@pytest.mark.parametrize("decide, message", [
    ({"futility": 0.4}, "decide.futility = 0.4: expected a level in (0, 1), with a margin"),
    ({"futility": 1.5, "margin": 0.01}, "decide.futility = 1.5: expected a level in (0, 1)"),
])
def test_a_futility_level_needs_a_margin_and_lies_in_0_1(tmp_path, decide, message):
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    (tmp_path / "seq.yaml").write_text(SEQUENTIAL.replace("decide: {fwer: 0.05}", f"decide: {json.dumps(decide)}"))
    proc = cli("ablate", str(tmp_path / "seq.yaml"))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_a_futile_variant_is_said_to_have_stopped_not_to_be_equivalent():
    design = {"seeds": {"min": 2, "max": 4, "step": 1},
              "decide": {"metric": "best/val_loss", "fwer": 0.05, "margin": 0.02, "spending": "obf",
                         "direction": "minimize", "futility": 0.4}}
    entry = {"decision": "futile", "look": 1, "seeds": 2, "diff": 0.001, "ci": [-0.5, 0.5], "p": 0.9, "p_holm": 0.9}
    table = decisions_table({"design": design, "baseline": "gelu", "looks": [
        {"seeds": 2, "runs": 4, "variants": {"relu": entry}}]}, "ablation seq")
    assert "FWER 0.05 (Holm over 1 variants, obf spending), margin +-0.02, futility 0.4" in table
    assert "| relu | futile | 1 (2 seeds) | +0.0010 | [-0.5000, +0.5000] | > 0.5 | > 0.5 |" in table
    assert "runs: 4 used, 8 for the fixed design at 4 seeds (50%)" in table


# ----------------------------------------------------------------------------- the engine, end to end

SEQUENTIAL = """\
name: seq
experiment: tiny.yaml
overrides: {train.max_iters: 10, train.eval_interval: 5}
grid: {model.activation: [gelu, relu, swiglu]}
seeds: {min: 2, max: 3}
decide: {fwer: 0.05}
"""


@pytest.fixture
def seq(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())
    path = tmp_path / "seq.yaml"
    path.write_text(SEQUENTIAL)
    return path


def record(tmp_path) -> dict:
    return json.loads((tmp_path / "runs" / "seq" / "decisions.json").read_text())


def test_rounds_run_to_the_last_look_record_each_and_a_rerun_decides_nothing_again(seq, tmp_path):
    out = cli("ablate", str(seq))
    assert out.returncode == 0, out.stderr
    looks = record(tmp_path)["looks"]
    assert [look["seeds"] for look in looks] == [2, 3]
    assert [look["runs"] for look in looks] == [6, 3]  # nothing decides on 10-step runs: both rounds are full
    assert all(e["decision"] == "undecided" for look in looks for e in look["variants"].values())
    assert "| activation=relu | undecided | 2 (3 seeds) |" in out.stdout
    assert "runs: 9 used, 9 for the fixed design at 3 seeds (100%)" in out.stdout
    before = (tmp_path / "runs" / "seq" / "decisions.json").read_bytes()
    again = cli("ablate", str(seq))
    assert again.returncode == 0 and "round at" not in again.stdout
    assert again.stdout.count("(recorded)") == 2
    assert (tmp_path / "runs" / "seq" / "decisions.json").read_bytes() == before
    status = cli("status", str(seq))
    assert "no round left" in status.stdout and "activation=swiglu-s3  finished" in status.stdout
    compared = cli("compare", str(tmp_path / "runs" / "seq"))
    assert "ablation seq: sequential over seeds 2..3" in compared.stdout
    report = cli("report", str(seq), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    written = (tmp_path / "report" / "report.md").read_text()
    assert "## Sequential decisions" in written and "activation=relu is not distinguished from the baseline" in written
    seq.write_text(SEQUENTIAL.replace("max: 3", "max: 6"))  # the design is part of the plan
    changed = cli("ablate", str(seq))
    assert changed.returncode == 2 and "sequential.seeds.max: 3 -> 6" in changed.stderr


def test_a_decided_variant_gets_no_more_seeds(seq, tmp_path):
    seq.write_text(SEQUENTIAL.replace("decide: {fwer: 0.05}", "decide: {fwer: 0.05, margin: 10.0}"))
    out = cli("ablate", str(seq))
    assert out.returncode == 0, out.stderr
    looks = record(tmp_path)["looks"]
    assert [look["seeds"] for look in looks] == [2]  # a margin of 10 nats: equivalent at the first look
    assert {e["decision"] for e in looks[-1]["variants"].values()} == {"equivalent"}
    assert sorted(p.name for p in (tmp_path / "runs" / "seq").glob("*-s3")) == []
    assert "runs: 6 used, 9 for the fixed design at 3 seeds (67%)" in out.stdout


def test_kill_9_between_rounds_then_rerun_runs_no_seed_twice_and_keeps_the_recorded_look(seq, tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "nanolab", "ablate", str(seq)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=dict(os.environ))
    for line in child.stdout:  # the first look is recorded, the next round's first run has begun
        if line.startswith("activation=gelu-s3: started"):
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    group = tmp_path / "runs" / "seq"
    first = record(tmp_path)["looks"]
    assert [look["seeds"] for look in first] == [2]
    started = {p.name: json.loads((p / "meta.json").read_text())["start_time"] for p in group.glob("*-s[12]")}
    out = cli("ablate", str(seq))
    assert out.returncode == 0, out.stderr
    assert record(tmp_path)["looks"][0] == first[0]
    assert {p.name: json.loads((p / "meta.json").read_text())["start_time"] for p in group.glob("*-s[12]")} == started
    assert sorted(p.name for p in group.iterdir() if p.is_dir()) == sorted(
        f"activation={a}-s{s}" for a in ("gelu", "relu", "swiglu") for s in (1, 2, 3))  # nothing set aside


@pytest.mark.parametrize("old,new,message", [
    ("decide: {fwer: 0.05}\n", "", "seeds = {'max': 3, 'min': 2}: a sequential ablation has both"),
    ("{min: 2, max: 3}", "[1, 2]", "decide = {'fwer': 0.05}: a sequential ablation has both"),
    ("{min: 2, max: 3}", "{min: 1, max: 3}", "seeds.min = 1: must be >= 2"),
    ("{fwer: 0.05}", "{fwer: 0.5}", "decide.fwer = 0.5: expected a family-wise error rate in (0, 0.5)"),
    ("{fwer: 0.05}", "{spending: linear}", "decide.spending = 'linear': expected one of obf, pocock"),
    ("{fwer: 0.05}", "{margin: -1}", "decide.margin = -1.0: expected a difference > 0"),
    ("{fwer: 0.05}", "{fwer: 0.05, seeds: 3}", "decide.seeds"),
    ("{fwer: 0.05}", "{metric: val/los}", "decide.metric = 'val/los': expected a figure of a run's summary.json"),
    ("[gelu, relu, swiglu]", "[relu, swiglu]", "decide: a sequential ablation compares each variant with the baseline"),
])
def test_a_bad_sequential_file_is_one_line_naming_the_key(seq, tmp_path, old, new, message):
    seq.write_text(SEQUENTIAL.replace(old, new))
    out = cli("ablate", str(seq))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_the_seeds_flag_is_refused(seq, tmp_path):
    out = cli("ablate", str(seq), "--seeds", "5")
    assert out.returncode == 2 and "chooses its seeds as it goes" in out.stderr and not (tmp_path / "runs").exists()
