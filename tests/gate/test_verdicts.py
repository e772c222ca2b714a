"""The baseline verdict takes the options and the run's fingerprint (no session): written when
missing, compared when it matches, refused when it was made for other inputs."""

from __future__ import annotations

from pytest_qdm.gate.verdicts import baseline_verdicts
from pytest_qdm.options_parse import build_options
from tests.reliability.test_baselines import fingerprint


def test_baseline_written_then_compared_then_refused_for_other_inputs(tmp_path, tiny_report):
    path = tmp_path / "baseline.json"
    options = build_options({"model": "tiny", "baseline": str(path)})
    (written,) = baseline_verdicts(options, fingerprint(), tiny_report)
    assert not written.passed and "baseline written" in written.message and path.exists()
    (same,) = baseline_verdicts(options, fingerprint(), tiny_report)
    assert same.passed and f"within {path}" in same.message
    (other,) = baseline_verdicts(options, fingerprint(model_sha256="1"), tiny_report)
    assert not other.passed and "model_sha256" in other.message


def test_no_baseline_option_gives_no_verdict(tiny_report):
    options = build_options({"model": "tiny"})
    assert baseline_verdicts(options, fingerprint(), tiny_report) == []
