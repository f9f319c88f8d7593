"""The published results cannot drift from their numbers: each committed report under docs/results/ regenerates
from its runs.csv alone (tables, method and findings, to the character), and the README quotes findings sentences
that the reports generate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanolab.analysis.published import RUNS_CSV, comparison_section, read_published

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((REPO / "docs" / "results").glob(f"*/{RUNS_CSV}"))


def test_some_report_is_published_with_its_runs():
    assert PUBLISHED, "no docs/results/*/runs.csv"


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.parent.name)
def test_each_published_report_regenerates_from_its_runs_csv(path):
    assert comparison_section(read_published(path)) in (path.parent / "report.md").read_text()


@pytest.mark.parametrize("change", [1e-12, -0.01])
def test_a_changed_number_in_runs_csv_changes_the_regenerated_report(change):
    published = read_published(PUBLISHED[0])
    text = (PUBLISHED[0].parent / "report.md").read_text()
    published.loc[0, "best/val_loss"] += change  # below the printed digits too: the digest names the numbers
    assert comparison_section(published) not in text


def findings_of_reports() -> set[str]:
    sections = [comparison_section(read_published(path)) for path in PUBLISHED]
    return {line.removeprefix("- ") for section in sections for line in section.splitlines() if line.startswith("- ")}


@pytest.mark.parametrize("page", ["README.md", "docs/results.md"])
def test_the_results_quote_generated_findings_verbatim(page):
    quoted = re.findall(r"^> (.*)$", (REPO / page).read_text(), re.M)
    assert quoted, f"{page} quotes no finding"
    generated = findings_of_reports()
    assert [q for q in quoted if q not in generated] == []
