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
