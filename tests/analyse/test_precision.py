"""Precision at the run's budget: half-width, detectable change, tokens for a target."""

from __future__ import annotations

import math

import pytest

from pytest_qdm.analyse.precision import detectable_change, precision_line, tokens_for
from pytest_qdm.schema.audit import AuditResult, TokenSummary
from pytest_qdm.schema.protocol import ProtocolReport, SweepRow


def _report(cis):
    rows = [
        SweepRow.model_construct(condition=name, kind=kind, survived_ci=ci)
        for name, kind, ci in cis
    ]
    tokens = TokenSummary(n_sequences=32, context_length=128, n_tokens=4096, sha256="x")
    return ProtocolReport.model_construct(
        sweep=rows, audit=AuditResult.model_construct(tokens=tokens)
    )


def test_budget_scales_with_the_inverse_square_of_the_half_width():
    report = _report(
        [
            ("reference", "Reference", (100.0, 100.0)),
            ("rtn-int8", "RTN", (96.0, 98.0)),  # ±1
            ("rtn-int4", "RTN", (48.0, 54.0)),  # ±3, the widest
        ]
    )
    assert tokens_for(report, 1.5) == 4 * 4096  # half the width: four times the tokens
    assert tokens_for(report, 1.0, condition="rtn-int8") == 4096
    z, z80 = 1.959963984540054, 0.8416212335729143  # scipy-free: the normal quantiles
    assert detectable_change(report) == pytest.approx((z + z80) * math.sqrt(2) * 3 / z)
    assert "±3.0 pp" in precision_line(report) and "36,864 tokens" in precision_line(report)
    with pytest.raises(ValueError, match="half_width"):
        tokens_for(report, 0)


def test_no_interval_no_line():
    report = _report([("reference", "Reference", None), ("rtn-int8", "RTN", None)])
    assert tokens_for(report, 1.0) is None and precision_line(report) is None
