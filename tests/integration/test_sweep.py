"""The sweep from outside: --qdm-bits, --qdm-schemes, --qdm-lenses and --qdm-sae-prune in a
gate run, its terminal tables, JSON rows, plots and JUnit properties."""

from __future__ import annotations

from tests.helpers.gate import BARE, junit_properties, written_report

pytest_plugins = ["pytester"]


def test_schemes_lenses_and_sae_pruning_in_the_gate(pytester, gate):
    # int6 alone of the RTN widths: the SAE-pruning rows are read at it; nf4 and fp8 are added
    result = gate(
        *("--qdm-bits", "6", "--qdm-schemes", "nf4,fp8-e4m3", "--qdm-sae-prune", "0.25"),
        *("--qdm-min-survived", "nf4:0.5", f"--junitxml={pytester.path / 'junit.xml'}"),
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*Token-level agreement and SAE transfer*", "*nf4-b64*"])
    result.stdout.fnmatch_lines(["*SAE pruning without retraining*", "*25%*1,536*"])
    result.stdout.fnmatch_lines(["*min_survived[[]nf4-b64]*PASS*"])
    report = written_report(pytester.path)
    rows = {row["condition"]: row for row in report["sweep"]}
    assert {"nf4-b64", "fp8-e4m3"} <= set(rows) and rows["fp8-e4m3"]["sample_correlation"] > 0.9
    assert (pytester.path / "qdm-report" / "sae_pruning.png").exists()
    properties = set(junit_properties(pytester.path / "junit.xml"))
    assert {"qdm.nf4-b64.topk_agreement", "qdm.sae_prune.0.25.rtn-int6.sae_ev"} <= properties

    # the settings of the README's fixture examples (test_readme_examples.py): one audit for both
    bare = gate(*BARE)
    bare.assert_outcomes(passed=1)
    assert "Token-level agreement" not in bare.stdout.str()
    report = written_report(pytester.path)
    assert report["transfer"] == {} and report["sweep"][1]["sample_correlation"] is None
