"""--qdm-claims from outside: one pytest item per claim and condition, the Claims section of
every report, and a bad claims file refused at configure time."""

from __future__ import annotations

import pytest

from tests.helpers.gate import QUICK, junit_properties, written_report

pytest_plugins = ["pytester"]

CLAIMS = """
[[claim]]
id = "steer"
kind = "steers"
feature = 1111
alpha = 3.19
prompts = ["The result is a list of strings.", "See the tutorial for more."]
targets = ["x", "00"]
min_ratio = 0.5

[[claim]]
id = "no-effect"
kind = "steers"
feature = 1111
alpha = 0.0
prompts = ["The result is a list of strings.", "See the tutorial for more."]
targets = ["x"]
"""

DETECTS_OUTSIDE_THE_SAE = """
[[claim]]
id = "a"
kind = "detects"
feature = 99999
positive = ["x"]
negative = ["prose"]
min_auroc = 0.8
"""


def test_the_gate_runs_one_item_per_claim_and_condition(pytester, offline):
    (pytester.path / "claims.toml").write_text(CLAIMS)
    run = pytester.runpytest_subprocess(
        *QUICK[:4], "--qdm-bits", "4", "--qdm-no-cache", "--qdm-claims", "claims.toml",
        "--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-plots",
        "--junitxml", "junit.xml", "-v", "-p", "no:cacheprovider",
    )  # fmt: skip
    run.stdout.fnmatch_lines(
        ["*qdm-claims::steer?rtn-int4? PASSED*", "*qdm-claims::no-effect?rtn-int4? FAILED*"]
    )
    run.stdout.fnmatch_lines(["*Claims*", "*no-effect*steers*rtn-int4*"])
    assert "no-effect: no reference effect (steering effect 0" in run.stdout.str()
    written = written_report(pytester.path)
    assert {r["claim"] for r in written["claims"]["results"]} == {"steer", "no-effect"}
    assert "<h2>Claims</h2>" in (pytester.path / "qdm-report" / "index.html").read_text()
    props = junit_properties(pytester.path / "junit.xml")
    assert props["qdm.rtn-int4.claim.steer.holds"] == "True"


def test_plugin_refuses_at_configure_time(pytester, tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text(DETECTS_OUTSIDE_THE_SAE)
    result = pytester.runpytest("--qdm-model", "tiny", "--qdm-claims", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qdm-claims: *feature 99999 is outside the SAE (0..2047)*"])
