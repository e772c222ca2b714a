"""The claims of a gate session (``--qdm-claims``): measured on the session's model,
SAE and conditions (RTN widths, schemes, candidates), with the audit's own r for
``survives`` and the first audit rows for detection's top contexts; cached beside the
report under the run's fingerprint and the claims' digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pytest_qdm.schema.claims import ClaimsReport

OVERLAP_ROWS = 16  # audit rows whose top contexts detection compares


def session_conditions(session) -> list:
    """The conditions the gate audits, as objects: RTN widths, schemes, candidates."""
    from pytest_qdm.compress.conditions import RTN
    from pytest_qdm.compress.schemes import scheme_condition

    options = session.options
    return [
        *(RTN(b) for b in options.bits),
        *(scheme_condition(name) for name in options.audited_schemes),
        *session.subject.candidates,
    ]


def condition_names(options) -> list[str]:
    """The names of :func:`session_conditions`, known before anything loads."""
    from pytest_qdm.load.checkpoints import candidate_name

    return [
        *(f"rtn-int{b}" for b in options.bits),
        *options.audited_schemes,
        *(candidate_name(path) for path in options.candidates),
    ]


def session_claims(session) -> ClaimsReport:
    from pytest_qdm.claims.check import check_claims, check_targets
    from pytest_qdm.claims.files import claims_of_options

    options = session.options
    claims = claims_of_options(options)
    model = session.subject.model  # targets are checked before the audit runs
    check_targets(claims, lambda text: model.to_tokens(text, prepend_bos=False)[0].tolist())
    report = session.protocol()
    digest = hashlib.sha256(
        json.dumps([{"kind": c.kind, **c.model_dump()} for c in claims]).encode()
    ).hexdigest()[:16]
    path = Path(options.cache_dir) / f"claims-{session.fingerprint.key()}-{digest}.json"
    if options.cache and path.is_file():
        return ClaimsReport.model_validate_json(path.read_text())
    subject = session.subject
    result = check_claims(
        subject.model,
        subject.sae,
        claims,
        session_conditions(session),
        tokens=subject.tokens.tokens[:OVERLAP_ROWS],
        hook=options.hook,
        correlations={n: c.correlation for n, c in report.audit.conditions.items()},
    )
    if options.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.model_dump_json())
    return result
