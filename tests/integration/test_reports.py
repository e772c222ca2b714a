"""What a gate run writes: the terminal table, qdm-report/ (JSON, plots), JUnit cases and
properties, and the GitHub step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tests.helpers.gate import junit_properties, written_report

pytest_plugins = ["pytester"]


def test_gate_passes_and_writes_reports(pytester, gate):
    result = gate("--qdm-min-survived", "int8:0.5", f"--junitxml={pytester.path / 'junit.xml'}")
    result.assert_outcomes(passed=2)  # qdm-gate::audit, qdm-gate::min_survived[rtn-int8]
    result.stdout.fnmatch_lines(["*QDM audit*", "*rtn-int8*", "*PASS*"])
    report_dir = pytester.path / "qdm-report"
    report = written_report(pytester.path)
    assert report["schema_version"] == 1 and report["sae_fit"]["ok"]
    assert sorted(p.name for p in report_dir.glob("*.png"))
    properties = junit_properties(pytester.path / "junit.xml")
    assert float(properties["qdm.rtn-int8.survived_pct"]) >= 50
    assert properties["qdm.model"] == "tiny" and "qdm.fingerprint" in properties  # suite level
    assert properties["qdm.verdict"] == "pass"
    cases = {
        c.get("name"): c.get("classname")
        for c in ET.parse(pytester.path / "junit.xml").iter("testcase")
    }
    assert cases == {"audit": "qdm-gate", "min_survived[rtn-int8]": "qdm-gate"}
    assert not any(" " in name for name in properties)


def test_github_step_summary_is_appended(pytester, gate, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gate()
    assert "| condition" in summary.read_text().lower() or "|" in summary.read_text()
