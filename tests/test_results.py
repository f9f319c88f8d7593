"""The published results cannot drift from their numbers: each committed report under docs/results/ regenerates
from its runs.csv alone (tables, method and findings, to the character; a ladder's fits and held-out predictions
and an lr-vs-width grid's optima too), and the README quotes findings sentences that the reports generate."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from nanolab.analysis.published import RUNS_CSV, comparison_section, read_published
from nanolab.analysis.scaling_report import scaling_sections

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((REPO / "docs" / "results").glob(f"*/{RUNS_CSV}"))
SPEEDRUN_RUNS = REPO / "docs" / "results" / "speedrun" / "runs.json"  # benchmarks/speedrun.py --json


@functools.cache
def speedrun_script():
    """benchmarks/speedrun.py as a module, loaded once (registered first: its dataclasses look themselves up
    there)."""
    spec = importlib.util.spec_from_file_location("speedrun", REPO / "benchmarks" / "speedrun.py")
    module = sys.modules["speedrun"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def speedrun_section() -> str:
    """The record table and its sentences, regenerated from the speedrun's published runs."""
    return speedrun_script().published(json.loads(SPEEDRUN_RUNS.read_text()))


def test_the_speedrun_table_and_sentences_regenerate_from_its_runs():
    table, sentences = speedrun_section().split("\n\n")
    text = (REPO / "docs" / "results.md").read_text()
    assert table in text
    assert sentences.strip()
    for sentence in sentences.strip().splitlines():
        assert f"> {sentence.removeprefix('- ')}" in text.splitlines()


def test_a_changed_speedrun_run_changes_its_sentences():
    results = json.loads(SPEEDRUN_RUNS.read_text())
    results["runs"]["record"][0]["val_loss_whole"] += 1e-3
    assert speedrun_script().published(results) != speedrun_section()


def test_every_published_report_has_its_runs_csv():
    reports = sorted((REPO / "docs" / "results").glob("*/report.md"))
    assert reports and [r.parent for r in reports if not (r.parent / RUNS_CSV).is_file()] == []


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[Path, list[str]]:
    """runs.csv -> the sections of its published report that it alone makes (a ladder's bootstrap fits take
    seconds: made once per module)."""
    sections = {}
    for path in PUBLISHED:
        published = read_published(path)
        plots = tmp_path_factory.mktemp(path.parent.name)
        sections[path] = [comparison_section(published), *scaling_sections(published, plots)]
    return sections


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.parent.name)
def test_each_published_report_regenerates_from_its_runs_csv(path, regenerated):
    report = (path.parent / "report.md").read_text()
    for section in regenerated[path]:
        assert section in report


@pytest.mark.parametrize("change", [1e-12, -0.01])
def test_a_changed_number_in_runs_csv_changes_the_regenerated_report(change):
    published = read_published(PUBLISHED[0])
    text = (PUBLISHED[0].parent / "report.md").read_text()
    published.loc[0, "best/val_loss"] += change  # below the printed digits too: the digest names the numbers
    assert comparison_section(published) not in text


def test_a_ladders_regenerated_sections_read_its_size_values():
    ladders = [path for path in PUBLISHED if "flops_per_token" in read_published(path)]
    assert ladders, "no published ladder or lr-vs-width grid"


@pytest.mark.parametrize("page", ["README.md", "docs/results.md"])
def test_the_results_quote_generated_findings_verbatim(page, regenerated):
    quoted = re.findall(r"^> (.*)$", (REPO / page).read_text(), re.M)
    assert quoted, f"{page} quotes no finding"
    sections = [section for path in PUBLISHED for section in regenerated[path]] + [speedrun_section()]
    generated = {line.removeprefix("- ") for section in sections for line in section.splitlines() if line.strip()}
    assert [q for q in quoted if q not in generated] == []


@pytest.mark.parametrize("page, least", [("README.md", 2), ("docs/results.md", 10)])
def test_the_results_tables_are_their_reports_tables(page, least):
    """A table with the header of a table of the report it last linked to (its report.md or runs.csv) is made of
    rows of that report: a pasted table cannot drift from what `report` wrote."""
    page = (REPO / page).read_text()
    checked = 0
    for match in re.finditer(r"(?:^\|.*\n)+", page, re.M):
        linked = re.findall(r"\]\((?:docs/)?results/([\w-]+)/(?:report\.md|runs\.csv)\)", page[:match.start()])
        report = (REPO / "docs" / "results" / linked[-1] / "report.md").read_text().splitlines() if linked else []
        rows = match.group(0).splitlines()
        if rows[0] in report:
            assert [row for row in rows if row not in report] == [], linked[-1]
            checked += 1
    assert checked >= least, f"{checked} tables of reports"
