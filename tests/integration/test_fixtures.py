"""The gate inside a pytest session: its collected item, the qdm_* fixtures, the qdm marker,
the assertion helpers, and the examples/ folder run as a team would run it."""

from __future__ import annotations

import shutil
from pathlib import Path

pytest_plugins = ["pytester"]


def test_gate_item_is_collected_and_unrelated_tests_are_not_run(pytester, gate):
    pytester.makepyfile(test_other="def test_unrelated():\n    pass\n")
    collected = gate("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["qdm-gate::audit", "*1 deselected*"])
    explicit = gate("--collect-only", "-q", "test_other.py")
    explicit.stdout.fnmatch_lines(["qdm-gate::audit", "test_other.py::test_unrelated"])
    idle = pytester.runpytest_subprocess("--collect-only", "-q")
    assert "qdm-gate" not in idle.stdout.str()


def test_fixtures_marker_and_assertions(pytester, gate):
    pytester.makepyfile(
        test_claims="""
        import pytest
        import pytest_qdm as qdm

        def test_survival(qdm_audit, record_property):
            qdm.assert_feature_survival(result=qdm_audit, bits=8, min_survived=0.5)

        def test_protocol_is_shared(qdm_protocol, qdm_audit):
            assert qdm_protocol.audit is qdm_audit

        @pytest.mark.qdm(bits=(4,), tokens=1024)
        def test_marker_settings(qdm_audit):
            assert list(qdm_audit.conditions) == ["rtn-int4"]
            assert qdm_audit.tokens.n_tokens <= 1024 + 128

        def test_model_sae_tokens(qdm_model, qdm_sae, qdm_tokens):
            assert qdm_tokens.tokens.shape[1] <= qdm_model.cfg.n_ctx
        """
    )
    result = gate("test_claims.py")
    result.assert_outcomes(passed=5)


def test_the_examples_pass_as_a_team_would_run_them(pytester, cache_dir, offline):
    """examples/ (its pytest.ini configures the gate on the bundled model) run as they are."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in examples.iterdir():
        if path.suffix in (".py", ".ini"):
            shutil.copy(path, pytester.path / path.name)
    # --opt=value: a bare path argument would move pytest's rootdir away from pytest.ini
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--qdm-cache-dir={cache_dir}")
    assert result.ret == 0, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()  # nothing skipped: the ini configured the gate
    assert set(outcomes) <= {"passed", "warning", "warnings"}, outcomes
    assert outcomes["passed"] > len(list(examples.glob("test_*.py")))  # tests and the gate
