"""Quiet by default: a gate run prints no third-party line a user cannot act on, and
--qdm-verbose shows them again (pytest_qdm/quiet.py)."""

from __future__ import annotations

import logging
import warnings

from pytest_qdm.quiet import third_party_quiet
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


def test_held_back_inside_and_restored_after(capsys, caplog):
    logger = logging.getLogger("torchao")
    before, filters = logger.level, list(warnings.filters)
    with third_party_quiet(), warnings.catch_warnings(record=True) as seen:
        logger.warning("Failed to load libtorchao_C_mxfp8.so")
        warnings.warn("The 'utils' module has been deprecated", DeprecationWarning, stacklevel=1)
        from tqdm import tqdm
        from transformers.utils import logging as hf_logging

        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):  # a library's bar
            pass
        for _ in tqdm(range(3), desc="ours"):  # a bar opened here (not a library's) shows
            pass
    assert [str(w.message) for w in seen] == []
    assert logger.level == before and warnings.filters == filters
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "ours" in err
    assert "Failed to load" not in caplog.text
    with third_party_quiet(verbose=True):
        logger.warning("shown when verbose")
    assert "shown when verbose" in caplog.text


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
