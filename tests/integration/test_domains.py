"""--qdm-dataset LABEL=FILE from outside: survival per text domain in every report and the
``COND@DOMAIN:BOUND`` gate syntax."""

from __future__ import annotations

import pytest

from tests.helpers.gate import junit_properties, written_report
from tests.stream.test_domains import domain_files  # noqa: F401 (a fixture)

pytest_plugins = ["pytester"]


def test_the_gate_reports_and_gates_each_domain(pytester, domain_files, offline):  # noqa: F811
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-tokens", "4096", "--qdm-bits", "8,4"),
        *("--qdm-match-bits", "0", "--qdm-lenses", "none"),  # the bounds read int8 and int4
        *("--qdm-no-cache", "-p", "no:cacheprovider", f"--junitxml={junit}"),
        *(f"--qdm-dataset={label}={path}" for label, path in domain_files.items()),
        *("--qdm-min-survived", "int8@code:0.5", "--qdm-min-survived", "int4@prose:1.0"),
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*Survival per domain*", "*min_survived[[]rtn-int4@prose]*FAIL*rtn-int4@prose*"]
    )
    report = written_report(pytester.path)
    row = next(r for r in report["sweep"] if r["condition"] == "rtn-int4")
    assert set(row["domains"]) == {"prose", "code"}
    assert all(cell["ppl_chunked_change"] is not None for cell in row["domains"].values())
    properties = junit_properties(junit)
    assert float(properties["qdm.rtn-int4@code.survived_pct"]) == pytest.approx(
        row["domains"]["code"]["survived_pct"]
    )
    assert (pytester.path / "qdm-report" / "domain_survival.png").is_file()
    assert "Survival per domain" in (pytester.path / "qdm-report" / "index.html").read_text()
