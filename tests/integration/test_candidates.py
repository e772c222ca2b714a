"""--qdm-candidate from outside: a shipped checkpoint (made by bitsandbytes from the bundled
model) gated from the command line, and the audit path chosen by ini key or option."""

from __future__ import annotations

import json

from tests.helpers.gate import junit_properties, written_report
from tests.load.test_checkpoints import nf4_folder, shipped  # noqa: F401 (shipped: a fixture)

pytest_plugins = ["pytester"]


def test_gate_a_shipped_checkpoint_from_the_command_line(pytester, shipped, monkeypatch):  # noqa: F811
    folder = nf4_folder(shipped)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-tokens", "2048", "--qdm-bits", "8,4"),
        *("--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-cache", "--qdm-no-plots"),
        *("--qdm-candidate", folder, "--qdm-min-survived", "candidate:0.9"),
        *("-p", "no:cacheprovider", f"--junitxml={pytester.path / 'junit.xml'}"),
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED *qdm-gate::min_survived[[]candidate:tiny-nf4]*"])
    report = written_report(pytester.path)
    spec = report["audit"]["conditions"]["candidate:tiny-nf4"]["spec"]
    assert spec["checkpoint"]["quant_method"] == "bitsandbytes"
    assert spec["checkpoint"]["path"] == "dequantize"
    properties = junit_properties(pytester.path / "junit.xml")
    assert "qdm.candidate:tiny-nf4.survived_pct" in properties


def test_forced_path_from_the_command_line_is_in_the_json(pytester, shipped, monkeypatch):  # noqa: F811
    folder = nf4_folder(shipped)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\nqdm_candidate_path = dequantize\n")
    cache = pytester.path / "cache"
    args = [
        *("--qdm-model", "tiny", "--qdm-tokens", "128", "--qdm-bits", "8"),
        *("--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-plots"),
        *("--qdm-candidate", folder, "--qdm-cache-dir", str(cache), "-p", "no:cacheprovider"),
    ]
    report = pytester.path / "qdm-report" / "qdm-report.json"

    def checkpoint(*more: str) -> dict:
        result = pytester.runpytest_subprocess(*args, *more)
        result.assert_outcomes(passed=1)
        path = "forward" if more else "dequantize"
        result.stdout.fnmatch_lines([f"*candidate:tiny-nf4: bitsandbytes nf4, {path} path*"])
        conditions = json.loads(report.read_text())["audit"]["conditions"]
        return conditions["candidate:tiny-nf4"]["spec"]["checkpoint"]

    assert checkpoint()["path"] == "dequantize"  # the ini key
    forced = checkpoint("--qdm-candidate-path", "forward")  # the command line wins
    # the same files and settings otherwise: the cached dequantize result was not reused
    assert forced["path"] == "forward" and forced["quant_method"] == "bitsandbytes"
