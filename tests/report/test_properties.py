"""The JUnit suite properties are built from values (report, fingerprint, cache hit,
version), not from the gate session."""

from __future__ import annotations

from pytest_qdm.report.properties import suite_properties
from tests.reliability.test_baselines import fingerprint


def test_suite_properties_carry_the_run_metadata(tiny_report):
    print_ = fingerprint(model="tiny", hook="blocks.4.hook_resid_post")
    properties = dict(suite_properties(tiny_report, print_, True, "9.9.9"))
    assert properties["qdm.version"] == "9.9.9"
    assert properties["qdm.model"] == "tiny"
    assert properties["qdm.hook"] == "blocks.4.hook_resid_post"
    assert properties["qdm.fingerprint"] == print_.key()
    assert properties["qdm.n_tokens"] == tiny_report.audit.tokens.n_tokens
    assert properties["qdm.cached"] in (1, True)
    uncached = dict(suite_properties(tiny_report, print_, False, "9.9.9"))
    assert uncached["qdm.cached"] in (0, False)
