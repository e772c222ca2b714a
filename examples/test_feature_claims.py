"""Regression tests on interpretability claims: named features must survive compression."""

import pytest

import pytest_qdm as qdm


@pytest.fixture
def probe_features(qdm_audit):
    # In a real project: the feature ids your probe or steering vector uses, pinned in the
    # repo. Here: the five most active features of the bundled SAE.
    rate = qdm_audit.reference.firing_rate
    return [int(i) for i in rate.argsort()[::-1][:5]]


def test_probe_features_survive_int8(qdm_audit, probe_features):
    qdm.assert_features_survive(probe_features, bits=8, min_correlation=0.9, result=qdm_audit)


@pytest.mark.qdm(bits=(6,), tokens=8000)
def test_probe_features_keep_meaning_at_int6(qdm_audit, probe_features):
    # The marker runs this test's own audit: INT6 only, on 8k tokens.
    qdm.assert_features_survive(probe_features, bits=6, min_correlation=0.5, result=qdm_audit)
