"""Release gate: the compressed model we ship must keep the SAE features we rely on."""

import pytest_qdm as qdm


def test_int8_keeps_almost_every_feature(qdm_audit):
    qdm.assert_feature_survival(result=qdm_audit, bits=8, min_survived=0.9)


def test_int4_damage_is_bounded(qdm_audit):
    qdm.assert_max_damaged(result=qdm_audit, bits=4, max_damaged=0.5)


def test_perplexity_does_not_hide_damage(qdm_protocol):
    # The study's central result, made a test: report every condition where perplexity
    # held while features did not; fail if that happens at the width we ship.
    shipped = "rtn-int8"
    masked = [f.message for f in qdm_protocol.findings if f.condition == shipped]
    assert not masked, masked
