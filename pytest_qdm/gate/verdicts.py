"""Judging a report: gate thresholds and the baseline (pytest-regressions style: write when
missing, refuse a foreign one, compare otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pytest_qdm.gate.baseline import compare, foreign_baseline, read_baseline, write_baseline
from pytest_qdm.gate.confidence import GateOn, judged_value
from pytest_qdm.gate.thresholds import GateCheck
from pytest_qdm.schema.gate import Verdict
from pytest_qdm.schema.protocol import ProtocolReport

if TYPE_CHECKING:
    from pytest_qdm.options import QdmOptions
    from pytest_qdm.schema.gate import Fingerprint


def named_checks(
    gates: tuple[GateCheck, ...], rtn: list[str], candidates: list[str] = ()
) -> list[tuple[str, GateCheck, str]]:
    """(name, check, condition) per verdict, ``*`` expanded over the RTN conditions and
    ``candidate`` over the candidates. Names are ``min_survived[rtn-int6]``, with ``-2``,
    ``-3`` ... where two checks meet."""
    groups = {"*": list(rtn), "candidate": list(candidates)}
    out, seen = [], {}
    for gate in gates:
        for condition in groups.get(gate.condition, [gate.condition]):
            where = f"{condition}@{gate.domain}" if gate.domain else condition
            name = f"{gate.option}[{where}]"
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}-{seen[name]}", gate, condition))
    return out


def planned_checks(options: QdmOptions) -> list[str]:
    """Every verdict the run will give, by name, known before it runs."""
    from pytest_qdm.load.checkpoints import candidate_name

    rtn = [f"rtn-int{b}" for b in options.bits]
    candidates = [candidate_name(path) for path in options.candidates]
    names = [name for name, _, _ in named_checks(options.gates, rtn, candidates)]
    return names + (["baseline"] if options.baseline else [])


def gate_verdicts(
    report: ProtocolReport, gates: tuple[GateCheck, ...], gate_on: GateOn = "estimate"
) -> list[Verdict]:
    """One verdict per check; ``gate_on`` picks the estimate or an end of its interval
    (gate/confidence.py)."""
    rtn = [r.condition for r in report.sweep if r.kind == "RTN"]
    candidates = [r.condition for r in report.sweep if r.kind == "Candidate"]
    verdicts = []
    for name, gate, condition in named_checks(gates, rtn, candidates):
        row = next((r for r in report.sweep if r.condition == condition), None)
        if row is None:
            message = (
                f"{condition} was not audited (see --qdm-bits, --qdm-schemes, --qdm-candidate)"
            )
            verdicts.append(Verdict(name, False, message))
            continue
        if gate.domain is None:
            value, note = judged_value(row, gate, gate_on, report.config.confidence)
            passed, message = gate.describe(value, condition, note)
        elif gate.domain in row.domains:
            value = getattr(row.domains[gate.domain], gate.metric)
            passed, message = gate.describe(value, f"{condition}@{gate.domain}")
        else:
            known = ", ".join(row.domains) or "none"
            passed, message = False, f"{condition} has no domain {gate.domain!r} (domains: {known})"
        verdicts.append(Verdict(name, passed, message))
    return verdicts


def baseline_verdicts(
    options: QdmOptions, fingerprint: Fingerprint, report: ProtocolReport, regen: bool = False
) -> list[Verdict]:
    """pytest-regressions flow: write when missing, refuse a foreign one, compare otherwise."""
    if not options.baseline:
        return []
    path = Path(options.baseline)
    if not path.exists() or regen:
        write_baseline(path, fingerprint, report)
        return [
            Verdict(
                "baseline", False, f"baseline written to {path}; commit it and rerun to compare"
            )
        ]
    try:
        saved = read_baseline(path)
    except ValueError as error:
        if not options.update_baseline:
            return [Verdict("baseline", False, str(error))]
        write_baseline(path, fingerprint, report)
        return [Verdict("baseline", False, f"baseline {path} rewritten (it was unreadable)")]
    differences = fingerprint.differences(saved.fingerprint)
    if differences:
        if options.update_baseline:
            write_baseline(path, fingerprint, report)
            return [
                Verdict("baseline", False, f"baseline {path} rewritten (it was for other inputs)")
            ]
        return [Verdict("baseline", False, foreign_baseline(path, differences))]
    paired = paired_or_none(report, saved.report)
    failures = compare(report, saved.report, list(options.baseline_checks), paired)
    if failures and options.update_baseline:
        write_baseline(path, fingerprint, report)
        failures.append(f"baseline {path} rewritten with this run")
    tests = [change.describe() for change in (paired or {}).values()]
    message = "; ".join(failures) or f"within {path}"
    return [Verdict("baseline", not failures, message + "".join(f" | {t}" for t in tests))]


def paired_or_none(report: ProtocolReport, baseline: ProtocolReport) -> dict | None:
    """Feature-by-feature changes against the baseline when it read the same tokens."""
    from pytest_qdm.analyse.paired import paired_changes, same_tokens

    if same_tokens(report.audit, baseline.audit) is not None:
        return None
    return paired_changes(report.audit, baseline.audit)
