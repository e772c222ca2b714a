"""--qdm-baseline from outside: written on the first run, compared (plain and paired) on the
next, refused when made for other inputs, replaced by --qdm-update-baseline."""

from __future__ import annotations

import json
import re

import pytest

pytest_plugins = ["pytester"]


def test_baseline_write_compare_refuse_update(pytester, gate):
    baseline = pytester.path / "baseline.json"
    first = gate("--qdm-baseline", str(baseline))
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines([f"*baseline written to {baseline}*"])
    gate("--qdm-baseline", str(baseline), "--qdm-baseline-fail", "survived:-2%").assert_outcomes(
        passed=2
    )

    saved = json.loads(baseline.read_text())
    for row in saved["report"]["sweep"]:
        row["survived_pct"] = (row["survived_pct"] or 0) + 10
    baseline.write_text(json.dumps(saved))
    worse = gate("--qdm-baseline", str(baseline), "--qdm-baseline-fail", "survived:-2%")
    worse.assert_outcomes(passed=1, failed=1)
    message = " ".join(worse.stdout.str().split())  # rich wraps long table cells
    found = re.search(
        r"rtn-int8 survived: ([\d.]+) vs baseline ([\d.]+) \(-10, allowed -2\) \[survived:-2%\]",
        message,
    )
    assert found and float(found[2]) - float(found[1]) == pytest.approx(10, abs=0.1)

    saved["fingerprint"]["model_sha256"] = "0" * 64
    baseline.write_text(json.dumps(saved))
    refused = gate("--qdm-baseline", str(baseline))
    refused.assert_outcomes(passed=1, failed=1)
    refused.stdout.fnmatch_lines(["*refused, it was made for other inputs: model_sha256*"])
    updated = gate("--qdm-baseline", str(baseline), "--qdm-update-baseline")
    updated.assert_outcomes(passed=1, failed=1)
    gate("--qdm-baseline", str(baseline)).assert_outcomes(passed=2)


def _doctor_baseline(path, n_features):
    """The baseline as if ``n_features`` features that do not survive int6 now had
    survived then (their r 0.99; survived % raised to match)."""
    saved = json.loads(path.read_text())
    cond = saved["report"]["audit"]["conditions"]["rtn-int6"]
    r = cond["correlation"]
    failing = [i for i, v in enumerate(r) if v is not None and v <= 0.9][:n_features]
    for i in failing:
        r[i] = 0.99
    row = next(x for x in saved["report"]["sweep"] if x["condition"] == "rtn-int6")
    n_active = sum(v is not None for v in r)
    row["survived_pct"] += 100 * len(failing) / n_active
    path.write_text(json.dumps(saved))
    return len(failing)


def test_baseline_verdict_reports_the_paired_test(pytester, gate_int6):
    gate_int6("--qdm-baseline", "base.json").assert_outcomes(passed=1, failed=1)  # written
    path = pytester.path / "base.json"
    original = path.read_text()

    assert _doctor_baseline(path, 40) == 40
    many = gate_int6(
        "--qdm-baseline", "base.json", "--qdm-baseline-fail", "int6.survived:-1:significant"
    )
    many.assert_outcomes(passed=1, failed=1)
    many.stdout.fnmatch_lines(["*significant (paired p=*", "*40 features lost survival, 0 gained*"])
    verdicts = json.loads((pytester.path / "qdm-report" / "verdicts.json").read_text())
    assert "McNemar exact p=" in verdicts[-1][2]

    path.write_text(original)
    _doctor_baseline(path, 3)  # a drop beyond 0.1 pp, but 3 discordant pairs: p = 0.25
    few = gate_int6(
        "--qdm-baseline", "base.json", "--qdm-baseline-fail", "int6.survived:-0.1:significant"
    )
    few.assert_outcomes(passed=2)
    plain = gate_int6("--qdm-baseline", "base.json", "--qdm-baseline-fail", "int6.survived:-0.1")
    plain.assert_outcomes(passed=1, failed=1)
