"""--qdm-gate-on through the gate: a bound between an end of the interval and the estimate."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

QUICK = [
    *("--qdm-model", "tiny", "--qdm-tokens", "2048", "--qdm-bits", "6", "--qdm-match-bits", "0"),
    *("--qdm-lenses", "none", "--qdm-no-plots", "-p", "no:cacheprovider"),
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qdm-cache")


@pytest.fixture
def gate(pytester, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makeini("[pytest]\n")

    def run(*args):
        return pytester.runpytest_subprocess(*QUICK, "--qdm-cache-dir", str(cache_dir), *args)

    return run


def row(pytester, condition):
    report = json.loads((pytester.path / "qdm-report" / "qdm-report.json").read_text())
    return next(r for r in report["sweep"] if r["condition"] == condition)


def test_a_bound_inside_the_interval_depends_on_the_end_gated(pytester, gate):
    gate("--qdm-min-survived", "int6:0").assert_outcomes(passed=2)
    measured = row(pytester, "rtn-int6")
    estimate, (low, high) = measured["survived_pct"], measured["survived_ci"]
    assert low < estimate < high
    below = f"int6:{(low + estimate) / 200:.6f}"  # between the lower end and the estimate
    above = f"int6:{(estimate + high) / 200:.6f}"  # between the estimate and the upper end

    lower = gate("--qdm-min-survived", below, "--qdm-gate-on", "lower")
    lower.assert_outcomes(passed=1, failed=1)
    lower.stdout.fnmatch_lines(
        ["*= 8*(gate on lower: the lower end of the 95% interval*estimate*required*FAILED"]
    )
    gate("--qdm-min-survived", below, "--qdm-gate-on", "estimate").assert_outcomes(passed=2)
    gate("--qdm-min-survived", below).assert_outcomes(passed=2)  # estimate by default

    gate("--qdm-min-survived", above).assert_outcomes(passed=1, failed=1)
    gate("--qdm-min-survived", above, "--qdm-gate-on", "upper").assert_outcomes(passed=2)


def test_kl_gate_reads_the_worse_end_under_lower(pytester, gate):
    gate("--qdm-max-kl", "int6:1").assert_outcomes(passed=2)
    measured = row(pytester, "rtn-int6")
    low, high = measured["kl_ci"]
    bound = f"int6:{(measured['kl'] + high) / 2:.8g}"  # above the estimate, below the upper end
    gate("--qdm-max-kl", bound).assert_outcomes(passed=2)
    result = gate("--qdm-max-kl", bound, "--qdm-gate-on", "lower")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*the upper end of the 95% interval*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qdm-gate-on", "median"], "--qdm-gate-on*estimate*lower*upper*"),
        (["--qdm-max-kl", "int6:5%"], "*a KL bound is in nats per token*"),
        (["--qdm-min-top1", "int6:1.5"], "*fraction in [[]0, 1[]]*"),
        (["--qdm-min-top1", "int6@code:0.9"], "*measured over all tokens, not per domain*"),
    ],
)
def test_bad_gate_options_fail_at_configure(pytester, args, message):
    result = pytester.runpytest_subprocess("--qdm-model", "tiny", *args)
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*{message}"])


def test_confidence_sets_the_level_of_the_intervals():
    from pytest_qdm.gate.session import GateSession
    from pytest_qdm.options_parse import build_options

    options = build_options({"model": "tiny", "confidence": "0.8"})
    assert GateSession(options).protocol_config.confidence == 0.8
    with pytest.raises(ValueError, match="--qdm-confidence"):
        build_options({"model": "tiny", "confidence": "95"})
