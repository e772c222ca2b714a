"""--qdm-confidence sets the level of the gate's intervals (tests/integration/test_thresholds.py
runs --qdm-gate-on through the gate)."""

from __future__ import annotations

import pytest


def test_confidence_sets_the_level_of_the_intervals():
    from pytest_qdm.gate.session import GateSession
    from pytest_qdm.options_parse import build_options

    options = build_options({"model": "tiny", "confidence": "0.8"})
    assert GateSession(options).protocol_config.confidence == 0.8
    with pytest.raises(ValueError, match="--qdm-confidence"):
        build_options({"model": "tiny", "confidence": "95"})
