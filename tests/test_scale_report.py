"""`nanolab report` on a real (tiny) scaling ladder and a real lr-vs-width grid: the fits, the held-out budget's
predictions next to the losses its runs measured, the advantage verdict, the plots; the best lr per width."""

from __future__ import annotations

import json
import re

import pytest
from helpers import tiny_yaml

from nanolab.analysis.published import read_published
from nanolab.analysis.scaling_report import scaling_sections
from nanolab.cli import main
from nanolab.runfolder import RunStore

pytestmark = pytest.mark.timeout(900)
LADDER = """name: ladder
experiment: tiny.yaml
overrides: {train.final_eval: true, train.eval_interval: 100000, train.warmup_iters: 2}
scale: {sizes: [[8, 1], [16, 1], [24, 1]], budgets: [1.0e+7, 2.0e+7, 4.0e+7]}
seeds: [1]
"""
LR_WIDTH = """name: lrw
experiment: tiny.yaml
overrides: {train.eval_interval: 20}
grid: {model.n_embd: [16, 32], train.lr: [1.0e-3, 1.0e-2, 1.0e-1]}
seeds: [1]
"""


@pytest.fixture(autouse=True)
def own_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_RUNS", str(tmp_path / "runs"))
    (tmp_path / "tiny.yaml").write_text(tiny_yaml())


def summaries(name: str) -> dict[str, dict]:
    folders = [f for f in (RunStore().group(name)).iterdir() if (f / "summary.json").is_file()]
    return {f.name: json.loads((f / "summary.json").read_text()) for f in folders}


def reported(tmp_path, name: str, plan: str):
    """Run the plan, then `nanolab report` it: the report's text and its folder. Its scaling section is the one
    that its runs.csv alone regenerates."""
    path, out = tmp_path / f"{name}.yaml", tmp_path / "report"
    path.write_text(plan)
    assert main(["ablate", str(path)]) == 0
    assert main(["report", str(path), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    (section,) = scaling_sections(read_published(out), tmp_path / "again")
    assert section in report
    return report, out


def test_the_report_of_a_ladder_predicts_its_held_out_budget(tmp_path):
    report, out = reported(tmp_path, "ladder", LADDER)
    assert "The budget 4e+07 is held out." in report and "on the budgets 1e+07, 2e+07;" in report
    runs = summaries("ladder")
    for width in (8, 16, 24):
        measured = runs[f"w{width}x1_C4e+07-s1"]["final/val_loss_whole"]
        row = re.search(rf"\| experiment \| w{width}x1 \| [\d,]+ \| [\d,]+ \| ([\d.]+) \[([\d.]+), ([\d.]+)\] "
                        rf"\| ([\d.]+) \| ([+-][\d.]+) \|", report)
        estimate, low, high, shown, error = map(float, row.groups())
        assert shown == round(measured, 4) and low <= estimate <= high
        assert error == pytest.approx(shown - estimate, abs=2e-4)
    for plot in ("isoflop.png", "frontier.png"):
        assert (out / plot).stat().st_size > 0 and f"]({plot})" in report


def test_the_report_of_an_lr_width_grid_names_the_best_lr_per_width(tmp_path):
    report, out = reported(tmp_path, "lrw", LR_WIDTH)
    runs = summaries("lrw")
    for width in (16, 32):
        losses = {lr: runs[f"n_embd={width}_lr={lr}-s1"]["best/val_loss"] for lr in (0.001, 0.01, 0.1)}
        best = min(losses, key=losses.get)
        assert re.search(rf"\| {width} \| {best:.3g} \| [\d.e-]+ \| {losses[best]:.4f} \|", report), report
    assert "across widths 16-32 (2x)" in report and (out / "lr_width.png").stat().st_size > 0
