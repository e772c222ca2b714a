"""Judging a report: gate thresholds and the baseline (pytest-regressions style: write when
missing, refuse a foreign one, compare otherwise).
"""

from __future__ import annotations

from pathlib import Path

from pytest_qdm.gate.baseline import compare, read_baseline, write_baseline
from pytest_qdm.gate.session import GateSession
from pytest_qdm.gate.thresholds import GateCheck
from pytest_qdm.schema.gate import Verdict
from pytest_qdm.schema.protocol import ProtocolReport


def gate_verdicts(report: ProtocolReport, gates: tuple[GateCheck, ...]) -> list[Verdict]:
    verdicts = []
    for gate in gates:
        names = (
            [r.condition for r in report.sweep if r.kind == "RTN"]
            if gate.condition == "*"
            else [gate.condition]
        )
        for name in names:
            row = next((r for r in report.sweep if r.condition == name), None)
            if row is None:
                verdicts.append(
                    Verdict(
                        gate.option,
                        False,
                        f"{name} was not audited (see --qdm-bits, --qdm-schemes)",
                    )
                )
                continue
            passed, message = gate.describe(getattr(row, gate.metric))
            verdicts.append(Verdict(f"{gate.option} {name}", passed, message))
    return verdicts


def baseline_verdicts(
    session: GateSession, report: ProtocolReport, regen: bool = False
) -> list[Verdict]:
    """pytest-regressions flow: write when missing, refuse a foreign one, compare otherwise."""
    options = session.options
    if not options.baseline:
        return []
    path = Path(options.baseline)
    fingerprint = session.fingerprint
    if not path.exists() or regen:
        write_baseline(path, fingerprint, report)
        return [
            Verdict(
                "baseline", False, f"baseline written to {path}; commit it and rerun to compare"
            )
        ]
    saved = read_baseline(path)
    differences = fingerprint.differences(saved.fingerprint)
    if differences:
        if options.update_baseline:
            write_baseline(path, fingerprint, report)
            return [
                Verdict("baseline", False, f"baseline {path} rewritten (it was for other inputs)")
            ]
        return [
            Verdict(
                "baseline",
                False,
                f"baseline {path} refused, it was made for other inputs: "
                + "; ".join(differences)
                + ". Rerun with --qdm-update-baseline to replace it.",
            )
        ]
    failures = compare(report, saved.report, list(options.baseline_checks))
    if failures and options.update_baseline:
        write_baseline(path, fingerprint, report)
        failures.append(f"baseline {path} rewritten with this run")
    return [Verdict("baseline", not failures, "; ".join(failures) or f"within {path}")]
