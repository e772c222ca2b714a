"""Bounds from outside: --qdm-min-survived, --qdm-max-damaged, --qdm-max-kl and the end of
the interval a bound is read at (--qdm-gate-on); one item per bound, one readable line."""

from __future__ import annotations

import pytest

from tests.helpers.gate import written_report

pytest_plugins = ["pytester"]


def row(pytester, condition):
    return next(r for r in written_report(pytester.path)["sweep"] if r["condition"] == condition)


def test_gate_fails_with_a_readable_message(pytester, gate):
    result = gate("--qdm-min-survived", "int4:1.0", "--qdm-max-damaged", "int8:0.5")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, failed=1)  # audit and max_damaged pass; one item each
    result.stdout.fnmatch_lines(
        [
            "*QDM gate min_survived[[]rtn-int4] failed for tiny: rtn-int4 survived_pct = *, "
            "required >= 100%: FAILED*",
            "FAILED *qdm-gate::min_survived[[]rtn-int4]*",
        ]
    )
    assert "FAILED qdm-gate::max_damaged" not in result.stdout.str()


def test_a_bound_inside_the_interval_depends_on_the_end_gated(pytester, gate_int6):
    gate_int6("--qdm-min-survived", "int6:0").assert_outcomes(passed=2)
    measured = row(pytester, "rtn-int6")
    estimate, (low, high) = measured["survived_pct"], measured["survived_ci"]
    assert low < estimate < high
    below = f"int6:{(low + estimate) / 200:.6f}"  # between the lower end and the estimate
    above = f"int6:{(estimate + high) / 200:.6f}"  # between the estimate and the upper end

    lower = gate_int6("--qdm-min-survived", below, "--qdm-gate-on", "lower")
    lower.assert_outcomes(passed=1, failed=1)
    lower.stdout.fnmatch_lines(
        ["*= 8*(gate on lower: the lower end of the 95% interval*estimate*required*FAILED"]
    )
    gate_int6("--qdm-min-survived", below, "--qdm-gate-on", "estimate").assert_outcomes(passed=2)
    gate_int6("--qdm-min-survived", below).assert_outcomes(passed=2)  # estimate by default

    gate_int6("--qdm-min-survived", above).assert_outcomes(passed=1, failed=1)
    gate_int6("--qdm-min-survived", above, "--qdm-gate-on", "upper").assert_outcomes(passed=2)


def test_kl_gate_reads_the_worse_end_under_lower(pytester, gate_int6):
    gate_int6("--qdm-max-kl", "int6:1").assert_outcomes(passed=2)
    measured = row(pytester, "rtn-int6")
    low, high = measured["kl_ci"]
    bound = f"int6:{(measured['kl'] + high) / 2:.8g}"  # above the estimate, below the upper end
    gate_int6("--qdm-max-kl", bound).assert_outcomes(passed=2)
    result = gate_int6("--qdm-max-kl", bound, "--qdm-gate-on", "lower")
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
    result = pytester.runpytest_inprocess("--qdm-model", "tiny", *args)  # nothing loads
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*{message}"])
