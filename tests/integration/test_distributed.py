"""Splitting the work from outside: pytest-xdist workers share one protocol run and keep the
JUnit properties; --qdm-two-phase runs the same numbers and shares the one-phase cache."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest_qdm as qdm
from tests.helpers.gate import INT6

pytest_plugins = ["pytester"]

COUNTING_CONFTEST = """
import pytest_qdm.run.protocol as protocol

_run = protocol.run_protocol

def counted(*args, **kwargs):
    with open({log!r}, "a") as log:
        log.write("run\\n")
    return _run(*args, **kwargs)

protocol.run_protocol = counted
"""


def test_xdist_runs_the_protocol_once_and_keeps_properties(pytester, tmp_path, monkeypatch):
    log = tmp_path / "runs.log"
    pytester.makeconftest(COUNTING_CONFTEST.format(log=str(log)))
    pytester.makepyfile(
        test_a="def test_a(qdm_audit):\n    assert qdm_audit.conditions\n",
        test_b="def test_b(qdm_audit):\n    assert qdm_audit.conditions\n",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cache = tmp_path / "cache"  # its own: the protocol runs are counted

    def run(*extra):
        junit = tmp_path / f"junit{len(extra)}.xml"
        args = [*INT6, "--qdm-cache-dir", str(cache), f"--junitxml={junit}"]
        args += ["test_a.py", "test_b.py", *extra]
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=3)
        root = ET.parse(junit)
        return {
            case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
            for case in root.iter("testcase")
        }

    parallel = run("-n", "2")
    assert log.read_text().count("run") == 1
    serial = run()
    assert parallel == serial and serial["test_a"]["qdm.rtn-int6.survived_pct"]


def test_the_gate_runs_in_two_phases_and_shares_the_one_phase_cache(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    # this checkout's package, also where another one is installed (git worktrees)
    monkeypatch.setenv("PYTHONPATH", str(Path(qdm.__file__).parents[1]))
    pytester.makeini("[pytest]\n")
    small = ["--qdm-model", "tiny", "--qdm-tokens", "1024", "--qdm-bits", "8,4"]
    small += ["--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-cache-dir", "cache"]
    small += ["--qdm-min-survived", "int8:0.5", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*small, "--qdm-two-phase", "--qdm-two-phase-dir", "tp")
    first.assert_outcomes(passed=2)
    assert list((pytester.path / "tp").iterdir()) == []  # made, used, and emptied
    run = json.loads((pytester.path / "qdm-report" / "run.json").read_text())
    assert run["cached"] is False
    # two-phase is not in the fingerprint: the one-phase run reads the same result
    second = pytester.runpytest_subprocess(*small)
    second.assert_outcomes(passed=2)
    assert json.loads((pytester.path / "qdm-report" / "run.json").read_text())["cached"] is True
