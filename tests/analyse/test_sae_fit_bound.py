"""The SAE-fit bound from the command line: --qdm-min-explained-variance (none audits
anyway), a refusal that names it, and a headline that says when the fit is poor."""

from __future__ import annotations

import pytest

from pytest_qdm.options_parse import build_options

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(("given", "expected"), [(None, 0.5), ("none", None), ("0.3", 0.3)])
def test_option_parses(given, expected):
    raw = {"model": "tiny"} | ({} if given is None else {"min-explained-variance": given})
    assert build_options(raw).min_explained_variance == expected


def test_bad_value_is_one_line_naming_the_option():
    with pytest.raises(ValueError, match="--qdm-min-explained-variance"):
        build_options({"model": "tiny", "min-explained-variance": "1.5"})


def test_refusal_names_the_option_and_none_audits_with_a_headline(
    neox_model, neox_sae, neox_tokens
):
    import pytest_qdm as qdm
    from pytest_qdm.report._format import headline
    from pytest_qdm.settings import AuditConfig, ProtocolConfig

    def run(bound):
        return qdm.run_protocol(
            neox_model, neox_sae, neox_tokens, bits=(8,), match_bits=None,
            config=AuditConfig(batch_size=8, progress=False),
            protocol=ProtocolConfig(
                ppl_tokens=64, n_shards=2, n_bootstrap=0, sae_transfer=False,
                min_explained_variance=bound,
            ),
        )  # fmt: skip

    with pytest.raises(ValueError, match="--qdm-min-explained-variance none"):
        run(1.0)
    report = run(None)
    poor = [line for line in headline(report) if line.startswith("POOR SAE FIT")]
    assert report.sae_fit.explained_variance < 0.5 and poor  # this SAE fits poorly


def test_the_gate_refuses_with_the_option_named(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\nqdm_min_explained_variance = 0.9999\n")  # the ini key
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-tokens", "1024", "--qdm-bits", "8"),
        *("--qdm-match-bits", "0", "--qdm-no-cache", "-p", "no:cacheprovider"),
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SAE does not fit*--qdm-min-explained-variance none*"])
