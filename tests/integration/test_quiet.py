"""Quiet by default, from outside: a gate run prints no third-party line a user cannot act on
(tests/test_quiet.py holds the unit test of pytest_qdm/quiet.py)."""

from __future__ import annotations

from tests.load.test_checkpoints import rtn_w4a16, shipped  # noqa: F401  (the fixture)

pytest_plugins = ["pytester"]

# one pattern per noise source named in issue 29
NOISE = (
    "_pytree",
    "register_constant",
    "torchao",
    "Failed to load",
    "gemm_4bit",
    "bitsandbytes",
    "'utils' module has been deprecated",
    "script_method",
    "warnings summary",
    "You passed `quantization_config`",
    "Decompressing",
    "Compressing",
    "it/s]",
    "Loading weights",
)


def noise(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(n in line for n in NOISE)]


def test_quick_candidate_gate_prints_no_third_party_line(pytester, shipped, monkeypatch):  # noqa: F811
    """The issue's acceptance, line by line: a --qdm-quick gate of a compressed-tensors
    candidate (its decompression bars, transformers' quantization_config warning, the
    torch/torchao/bitsandbytes import lines, sae_lens' deprecations) prints none of them.
    The budget is cut below --qdm-quick's to keep the test short: the noise comes from
    imports and loading, not from the number of tokens."""
    folder = rtn_w4a16(shipped)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-quick", "--qdm-tokens", "1024", "--qdm-ppl-tokens", "256"),
        *("--qdm-bits", "8,4", "--qdm-match-bits", "0", "--qdm-lenses", "none"),
        *("--qdm-candidate", folder, "--qdm-no-cache", "--qdm-no-plots"),
    )
    assert result.ret == 0, result.stdout.str()
    assert noise(result.stdout.str() + result.stderr.str()) == []
    result.stdout.fnmatch_lines(["qdm gate: 1 item (audit)", "report: *index.html *"])
