"""`nanolab report`: the Markdown report and its PNGs from tiny ablation and sweep runs, and the W&B Report object,
built and described without the network."""

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import wandb_workspaces.reports.v2 as wr
from helpers import cli, tiny_yaml
from wandb_workspaces import expr

import torch

from nanolab import load_spec
from nanolab.analysis import load_runs
from nanolab.analysis.published import FIXED, comparison_section, read_published
from nanolab.analysis.report import write_report
from nanolab.cli import main
from nanolab.config import Config, TrackingConfig, WandbConfig
from nanolab.errors import NanolabError
from nanolab.tracking import workspace

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
ABLATION = """\
experiment: tiny.yaml
grid: {model.activation: [relu, swiglu]}
seeds: [1, 2]
"""
SWEEP = """\
experiment: tiny.yaml
space: {train.lr: {float: [1.0e-3, 1.0e-2], log: true}}
sampler: {name: random, seed: 0}
pruner: none
trials: 2
"""


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """An ablation `act` (2 activations x 2 seeds) and a sweep `lrs` (2 trials) that have run, under their own
    runs root, which stays $NANOLAB_RUNS for the module's tests (the sweep's study is found through it)."""
    folder = tmp_path_factory.mktemp("plans")
    (folder / "tiny.yaml").write_text(tiny_yaml())
    (folder / "act.yaml").write_text(ABLATION)
    (folder / "lrs.yaml").write_text(SWEEP)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLAB_RUNS", str(folder / "runs"))
        assert main(["ablate", str(folder / "act.yaml")]) == 0
        assert main(["sweep", str(folder / "lrs.yaml")]) == 0
        yield folder


def headings(text: str) -> list[str]:
    return re.findall(r"^#+ .*$", text, re.M)


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return f"`{done.stdout.strip()}`" if done.returncode == 0 else "none (not a git checkout)"


def assert_plots(out: Path, text: str) -> None:
    for name, x in (("val_loss_step.png", "step"), ("val_loss_flops.png", "FLOPs")):
        assert f"![val/loss against {x}]({name})" in text
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000


def test_ablation_report(plans, tmp_path):
    out = tmp_path / "report"
    proc = cli("report", str(plans / "act.yaml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out / 'report.md'}\n"
    text = (out / "report.md").read_text()
    assert headings(text) == ["# Ablation act", "## What ran", "## Comparison", "## Findings", "## Curves",
                              "## Tuned parameters", "## Environment", "## W&B"]
    assert "- 4 runs (4 finished), seeds 1, 2\n" in text
    assert "- grid: model.activation in ['relu', 'swiglu']\n" in text
    table = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    assert table[0][:2] == ["model.activation", "n"]
    assert sorted(row[:2] for row in table[2:4]) == [["relu", "2"], ["swiglu", "2"]]
    [method] = [line for line in text.splitlines() if line.startswith("Method:")]
    assert method.startswith("Method: best/val_loss of each variant's finished runs (n = 2 per variant), best first")
    assert "a paired t-test" in method and "Holm" in method
    assert_plots(out, text)
    assert "Not tuned: every variant ran at the experiment's values." in text
    assert f"| git commit | {git_commit()}" in text and "| device | cpu (" in text
    assert "W&B was off for these runs" in text


def test_sweep_report(plans, tmp_path):
    out = tmp_path / "report"
    path = write_report(plans / "lrs.yaml", out)
    text = path.read_text()
    assert headings(text) == ["# Sweep lrs", "## What ran", "## Trials", "## Best parameters", "## Curves",
                              "## Environment", "## W&B"]
    assert "- space: train.lr {'float': [0.001, 0.01], 'log': True}\n" in text
    assert "- 2 runs (2 finished), seeds 1337\n" in text
    assert "top 2 trials (minimize val/loss):" in text
    assert re.search(r"^Trial [01]; `nanolab run .*/sweeps/lrs/best.yaml` trains it again\.$", text, re.M)
    assert re.search(r"^\| train\.lr \| 0\.00\d+ \|$", text, re.M)
    assert_plots(out, text)


@pytest.fixture
def copied_runs(plans, tmp_path):
    """A copy of the ablation's runs root, to edit meta.json in."""
    root = tmp_path / "runs"
    shutil.copytree(plans / "runs" / "act", root / "act")
    return root


def edit_meta(root: Path, run_id: str, **fields) -> None:
    path = root / "act" / run_id / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_tuned_values_wandb_links_and_disagreeing_environments(plans, copied_runs, tmp_path):
    for seed in (1, 2):
        edit_meta(copied_runs, f"activation=relu-s{seed}", tuned={"train.lr": 0.002})
        edit_meta(copied_runs, f"activation=swiglu-s{seed}", tuned={"train.lr": 0.004}, wandb_mode="offline")
    edit_meta(copied_runs, "activation=relu-s1", wandb_url="https://wandb.ai/me/nanolab/runs/abc", device="cuda:0",
              device_name="NVIDIA H100")
    text = write_report(plans / "act.yaml", tmp_path / "out", runs=copied_runs).read_text()
    assert "| model.activation | train.lr |\n| --- | --- |\n| relu | 0.002 |\n| swiglu | 0.004 |\n" in text
    assert "- [activation=relu-s1](https://wandb.ai/me/nanolab/runs/abc)\n" in text
    assert (f"2 of the runs are offline W&B runs: `nanolab sync {copied_runs / 'act'}/*/` uploads them, then "
            f"`nanolab report {plans / 'act.yaml'} --wandb` makes their W&B Report.") in text
    assert re.search(r"^\| device \| runs disagree: cuda:0 \(NVIDIA H100\) \(1 runs\); cpu \(.*\) \(3 runs\) \|$",
                     text, re.M)


def test_the_example_script_reports_another_runs_root(plans, copied_runs, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), str(plans / "act.yaml"), "--runs",
                           str(copied_runs), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {tmp_path / 'out' / 'report.md'}\n"
    assert f"run folders in `{copied_runs / 'act'}`" in (tmp_path / "out" / "report.md").read_text()


def test_bad_input_is_one_line_and_exit_2(plans, tmp_path, capsys):
    shutil.copy(plans / "act.yaml", tmp_path / "never.yaml")
    shutil.copy(plans / "tiny.yaml", tmp_path / "tiny.yaml")
    assert main(["report", str(tmp_path / "never.yaml")]) == 2
    assert capsys.readouterr().err == (f"nanolab: error: no runs of ablation never in {plans / 'runs' / 'never'}; "
                                       f"run `nanolab ablate {tmp_path / 'never.yaml'}` first\n")
    assert main(["report", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"nanolab: error: {tmp_path / 'nope.yaml'}: no such file\n"
    assert main(["report", str(plans / "act.yaml"), "--project", "elsewhere"]) == 2
    assert capsys.readouterr().err == "nanolab: error: --entity and --project place the W&B Report: add --wandb\n"


# ----------------------------------------------------------------------------- the W&B Report object


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_wandb_offline_says_what_it_would_create_and_how(plans, tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["report", str(plans / "lrs.yaml"), "--out", str(tmp_path), "--wandb", "--entity", "me"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'report.md'}",
        "W&B mode offline: no W&B Report was created. Online, it would be",
        "W&B Report 'Sweep lrs' in me/nanolab",
        "  runs: Metric(\"Group\") == 'lrs' and SummaryMetric(\"status\") not in ['pruned', 'diverged']",
        "  grouped by: nothing (a line per run); sorted by best/val_loss ascending",
        "  panel: line plot of val/loss against Step, a line per run",
        "  panel: line plot of train/loss against Step, a line per run",
        "  panel: parallel coordinates over train.lr, best/val_loss",
        "  panel: parameter importance against best/val_loss",
        f"to create it: `nanolab sync {plans / 'runs' / 'lrs'}/*/` (uploads offline runs), `wandb login`, then "
        f"`nanolab report {plans / 'lrs.yaml'} --wandb`",
    ]


def runset_filters(runset: wr.Runset) -> list[tuple]:
    tree = expr.expr_to_filters(runset.filters)
    return [(f.key.section, f.key.name, f.op, f.value) for f in tree.filters]


def test_ablation_report_object(no_network):
    report = workspace.build_report("me", "nanolab", "act", "Ablation act", by=["model.activation"])
    assert (report.entity, report.project, report.title) == ("me", "nanolab", "Ablation act")
    [grid] = report.blocks
    [runset] = grid.runsets
    assert (runset.entity, runset.project, runset.name) == ("me", "nanolab", "act")
    assert runset_filters(runset) == [("run", "group", "=", "act"),
                                      ("summary", "status", "NIN", ["pruned", "diverged"])]
    assert runset.groupby == ["config.model.activation"]
    assert [expr.groupby_str_to_key(g).name for g in runset.groupby] == ["model.value.activation"]  # nested config
    assert [(o.name.name, o.ascending) for o in runset.order] == [("best/val_loss", True)]
    assert runset.visible_columns == ["summary:best/val_loss", "summary:best/step", "summary:status"]
    plots = [panel._to_model().config for panel in grid.panels]
    assert [(p.metrics, p.x_axis, p.group_by, p.group_agg, p.group_area, p.aggregate) for p in plots] == [
        (["val/loss"], "_step", "model.value.activation", "mean", "minmax", True),
        (["train/loss"], "_step", "model.value.activation", "mean", "minmax", True)]


def test_two_grid_keys_group_the_runs_and_the_plots_follow_the_run_set(no_network):
    report = workspace.build_report("me", "nanolab", "norm", "Ablation norm", by=["model.norm", "model.norm_placement"])
    [grid] = report.blocks
    assert grid.runsets[0].groupby == ["config.model.norm", "config.model.norm_placement"]
    assert [(p.groupby, p.aggregate, p.groupby_aggfunc, p.groupby_rangefunc) for p in grid.panels] == [
        (None, True, "mean", "minmax")] * 2


def test_sweep_report_object(no_network):
    report = workspace.build_report("me", "nanolab", "lr", "Sweep lr", swept=["train.lr", "train.warmup_iters"])
    [grid] = report.blocks
    assert grid.runsets[0].groupby == []
    lines, coordinates, importance = grid.panels[:2], grid.panels[2], grid.panels[3]
    assert [(p.y, p.groupby, p.aggregate) for p in lines] == [(["val/loss"], None, None), (["train/loss"], None, None)]
    assert [c._to_model().accessor for c in coordinates.columns] == [
        "config:train.value.lr", "config:train.value.warmup_iters", "summary:best/val_loss"]
    assert importance._to_model().config.target_key == "best/val_loss"


@pytest.mark.parametrize("spec_mode, env, reason", [
    ("disabled", {}, "W&B mode disabled"),
    ("auto", {}, "no W&B API key"),
    ("offline", {"WANDB_API_KEY": "x" * 40}, "W&B mode offline"),
    ("auto", {"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}, "W&B mode offline"),
    ("disabled", {"WANDB_MODE": "online"}, "no W&B API key"),
    ("auto", {"WANDB_API_KEY": "x" * 40}, None),
])
def test_the_report_is_saved_only_when_wandb_is_online(spec_mode, env, reason, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert workspace.offline_reason(Config(tracking=TrackingConfig(wandb=WandbConfig(mode=spec_mode)))) == reason


def test_online_saves_the_report_and_prints_its_url(plans, no_network, monkeypatch):
    saved = []
    monkeypatch.setattr(workspace, "offline_reason", lambda cfg: None)
    monkeypatch.setattr(wr.Report, "save", lambda self: saved.append(self))
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "https://wandb.ai/me/nanolab/reports/x"))
    publish = [load_spec(plans / "tiny.yaml"), "act", "Ablation act", ["model.activation"], [], "act.yaml",
               plans / "runs" / "act"]
    text = workspace.publish(*publish, entity="me")
    assert [r.title for r in saved] == ["Ablation act"]
    assert text.startswith("created W&B Report 'Ablation act' in me/nanolab\n")
    assert text.endswith("\nhttps://wandb.ai/me/nanolab/reports/x")

    def refuse(self):
        raise ValueError("project 'me/nanolab' not found\nmore")

    monkeypatch.setattr(wr.Report, "save", refuse)
    with pytest.raises(NanolabError, match=r"^W&B Report not created: ValueError: project 'me/nanolab' not found$"):
        workspace.publish(*publish, entity="me")


# ----------------------------------------------------------------------------- runs.csv and report --check


def test_runs_csv_holds_each_run_at_full_precision_and_the_report_regenerates_from_it(plans, tmp_path):
    out = tmp_path / "report"
    text = write_report(plans / "act.yaml", out).read_text()
    published = read_published(out)
    runs = load_runs(plans / "runs" / "act").set_index("run_id")
    assert list(published.columns) == [*FIXED, "model.activation"]
    assert sorted(published["run_id"]) == sorted(runs.index)
    for _, run in published.iterrows():  # bit for bit: repr floats read back equal
        assert run["best/val_loss"] == runs.loc[run["run_id"], "best/val_loss"]
        assert run["final/val_loss"] == runs.loc[run["run_id"], "final/val_loss"]
        assert (run["threads"], run["torch"]) == (torch.get_num_threads(), torch.__version__)
    # the tiny experiment's gelu is not in the grid: compare's default baseline, the first variant of most runs
    assert list(published["baseline"]) == [True, True, False, False]
    section = comparison_section(published)
    assert section in text and section.count("\n- ") == 1  # one finding: the one variant against the baseline
    changed = published.assign(**{"best/val_loss": published["best/val_loss"] + [1e-4, 0, 0, 0]})
    assert comparison_section(changed) not in text


def test_report_check_says_per_run_whether_it_was_reproduced(plans, copied_runs, tmp_path, capsys):
    out = tmp_path / "published"
    write_report(plans / "act.yaml", out, runs=copied_runs)
    assert main(["report", "--check", str(out), "--runs", str(copied_runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [f"activation={a}-s{s}: bit-identical" for a in ("relu", "swiglu") for s in (1, 2)]
    assert lines[4] == f"4 published runs of act against {copied_runs / 'act'}: 4 bit-identical"
    published = read_published(out)
    loss = published["best/val_loss"]
    published["best/val_loss"] = [loss[0] + 3e-7, loss[1] + 0.02, *loss[2:]]
    published.loc[3, "threads"] = 7
    published.to_csv(out / "runs.csv", index=False)
    shutil.rmtree(copied_runs / "act" / "activation=swiglu-s1")
    assert main(["report", "--check", str(out), "--runs", str(copied_runs)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "activation=relu-s1: within 3.0e-07", "activation=relu-s2: differs by 0.02", "activation=swiglu-s1: missing",
        f"activation=swiglu-s2: bit-identical (threads {torch.get_num_threads()}, published 7)",
        f"4 published runs of act against {copied_runs / 'act'}: 1 within, 1 differs, 1 missing, 1 bit-identical"]


def test_report_check_bad_input_is_one_line(tmp_path, capsys):
    assert main(["report", "--check", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"nanolab: error: {tmp_path / 'runs.csv'}: no such file; a published "
                                       "report's folder holds its runs.csv\n")
    (tmp_path / "runs.csv").write_text("a,b\n1,2\n")
    assert main(["report", "--check", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"nanolab: error: {tmp_path / 'runs.csv'}: not a published runs.csv: "
                                              "no column 'run_id'; expected columns run_id, group,")
    assert main(["report"]) == 2
    assert "give an ablation or sweep FILE, or --check DIR" in capsys.readouterr().err


def test_a_reports_equivalence_margin_travels_in_runs_csv(plans, tmp_path):
    text = write_report(plans / "act.yaml", tmp_path, margin=100.0).read_text()
    published = read_published(tmp_path)
    assert list(published["margin"]) == [100.0] * 4
    section = comparison_section(published)
    assert section in text
    [finding] = [line for line in section.splitlines() if line.startswith("- ")]
    assert ": equivalent within ±100 (the interval lies inside it), " in finding or ": significant, " in finding
    assert comparison_section(published.drop(columns="margin")) not in text


NAMED = """\
name: loo
experiment: tiny.yaml
variants: {record: {}, relu: {model.activation: relu}, wide: {model.activation: relu, model.n_embd: 32}}
seeds: [1, 2]
"""


@pytest.fixture(scope="module")
def named(plans):
    """A leave-one-out ablation of named variants that has run beside `act`."""
    (plans / "loo.yaml").write_text(NAMED)
    assert main(["ablate", str(plans / "loo.yaml")]) == 0
    return plans / "loo.yaml"


def test_named_variants_are_reported_by_name_on_the_metric_asked_for(named, tmp_path):
    text = write_report(named, tmp_path, metric="final/val_loss").read_text()
    published = read_published(tmp_path)
    assert list(published.columns) == [*FIXED, "variant", "model.activation", "model.n_embd", "metric"]
    assert set(published["metric"]) == {"final/val_loss"}
    assert set(published.loc[published["baseline"], "variant"]) == {"record"}
    assert ("- variants: record (the experiment itself); relu (model.activation=relu); wide (model.activation=relu, "
            "model.n_embd=32)") in text
    final = published.groupby("variant")["final/val_loss"].mean()
    for variant in ("relu", "wide"):  # the findings are of final/val_loss, labelled by the variant's name
        assert f"\n- {variant}: {final[variant] - final['record']:+.4f} [" in text
    assert "Method: final/val_loss of each variant's finished runs" in text
    assert comparison_section(published) in text


def test_compare_names_a_named_ablations_rows_its_baseline_and_its_missing_runs(named, tmp_path, capsys):
    assert main(["compare", str(named)]) == 0
    out = capsys.readouterr().out
    assert "baseline variant=record (the baseline of the ablation" in out
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["record"], ["relu"], ["wide"])]
    assert sorted(rows) == ["record", "relu", "wide"] and "model.n_embd" not in out
    assert main(["compare", str(named), "--by", "model.activation", "model.n_embd"]) == 0
    assert "baseline model.activation=gelu, model.n_embd=16 (the baseline of the ablation" in capsys.readouterr().out
    assert main(["compare", str(named.parent / "runs" / "act"), "--by", "variant"]) == 0  # a grid's labels
    assert "activation=swiglu  2" in capsys.readouterr().out
    shutil.copytree(named.parent / "runs" / "loo", tmp_path / "loo")
    shutil.rmtree(tmp_path / "loo" / "wide-s2")
    assert main(["compare", str(tmp_path / "loo")]) == 0
    assert "not finished (1 of 6 variant x seed, over the seeds started so far): variant=wide seed 2 (not started)" \
        in capsys.readouterr().out


def test_report_metric_must_be_a_runs_figure(named, tmp_path, capsys):
    assert main(["report", str(named), "--out", str(tmp_path / "r"), "--metric", "final/val_los"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanolab: error: unknown metric 'final/val_los' (did you mean 'final/val_loss'?)")
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_plan_recorded_before_its_facts_grew_gets_them_on_the_next_call(named, tmp_path, monkeypatch, capsys):
    """An ablation of named variants that ran before plan.json said `named` was reported by the union of its
    keys; calling the same ablation again (nothing left to run) records the facts this version knows."""
    shutil.copytree(named.parent / "runs" / "loo", tmp_path / "loo")
    record = json.loads((tmp_path / "loo" / "plan.json").read_text())
    (tmp_path / "loo" / "plan.json").write_text(json.dumps({k: v for k, v in record.items() if k != "named"}))
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path))
    assert main(["ablate", str(named)]) == 0
    assert "6 already done, 0 to run" in capsys.readouterr().out
    assert json.loads((tmp_path / "loo" / "plan.json").read_text()) == record
