"""The Claims section of every report, qdm-report.json's ``claims`` and the JUnit
properties (tests/integration/test_claims.py runs the gate: one item per claim and condition)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from pytest_qdm.report import markdown_summary, render_report, write_json
from pytest_qdm.report.claims import claim_properties
from pytest_qdm.report.html import html_report
from pytest_qdm.schema.claims import ClaimResult, ClaimsReport
from pytest_qdm.schema.protocol import ProtocolReport
from tests.report.test_format import report  # noqa: F401 (the module's ProtocolReport fixture)

pytest_plugins = ["pytester"]

STEERS = dict(kind="steers", id="code-steering", feature=3, alpha=2.0, prompts=["a <b>"],
              targets=["x"])  # fmt: skip


def result(condition: str, status: str, ratio: float) -> ClaimResult:
    return ClaimResult(
        claim="code-steering", kind="steers", condition=condition, reference_effect=1.5,
        reference_ci=(1.2, 1.8), effect=1.5 * ratio, ratio=ratio, gated="ratio",
        ci=(ratio - 0.1, ratio + 0.1), bound=">= 0.8", status=status,
        message=f"code-steering {status} on {condition}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def with_claims(report):  # noqa: F811
    claims = ClaimsReport(
        claims=[STEERS],
        results=[result("rtn-int8", "holds", 0.98), result("rtn-int4", "fails", 0.4)],
    )
    return report.model_copy(update={"claims": claims})


def test_holds_follows_status():
    assert result("a", "holds", 1.0).holds
    assert not result("a", "no reference effect", 1.0).holds
    assert not result("a", "fails", 0.1).holds


def test_terminal_markdown_and_html_show_the_claims(with_claims):
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_report(with_claims, console)
    text = console.file.getvalue()
    assert "Claims" in text and "code-steering" in text and "fails" in text
    markdown = markdown_summary(with_claims)
    assert "### Claims" in markdown and "| code-steering | steers | rtn-int4 |" in markdown
    html = html_report(with_claims)
    assert "<h2>Claims</h2>" in html and "a &lt;b&gt;" in html  # the prompts, escaped


def test_report_without_claims_has_no_section(report):  # noqa: F811
    assert "Claims" not in markdown_summary(report)


def test_json_holds_claims_and_round_trips(with_claims, tmp_path):
    path = write_json(with_claims, tmp_path / "qdm-report.json")
    row = json.loads(path.read_text())["claims"]["results"][1]
    assert row["holds"] is False and row["ratio"] == 0.4 and row["ci"] == pytest.approx([0.3, 0.5])
    assert {"reference_effect", "effect", "ratio", "ci", "holds"} <= set(row)
    assert ProtocolReport.from_json(path.read_text()).claims == with_claims.claims


def test_junit_property_names():
    names = dict(claim_properties(result("rtn-int6", "holds", 0.9)))
    assert names["qdm.rtn-int6.claim.code-steering.ratio"] == 0.9
    assert names["qdm.rtn-int6.claim.code-steering.holds"] is True
    assert names["qdm.rtn-int6.claim.code-steering.ci_low"] == pytest.approx(0.8)
