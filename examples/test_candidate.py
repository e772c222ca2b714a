"""Audit a compressed checkpoint the team already has, against the reference model."""

import pytest_qdm as qdm


def test_our_int8_checkpoint_keeps_features(qdm_model, qdm_sae, qdm_tokens, absmax_int8_checkpoint):
    candidate = qdm.Candidate(absmax_int8_checkpoint, name="absmax-int8")
    result = qdm.audit(qdm_model, qdm_sae, qdm_tokens, [candidate], qdm.AuditConfig(progress=False))
    summary = result.conditions["absmax-int8"].summary
    assert summary.survived_pct >= 80, qdm.assertions.condition_report(
        result.conditions["absmax-int8"]
    )
