"""The option surface from outside: --help lists the options and stays fast, and a bad
value is refused at configure time in one line, before anything loads. Refusals run pytest
in this process (pytester's inprocess runs): nothing loads before them, so a subprocess would
add only its start."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest_plugins = ["pytester"]


def test_help_lists_every_option(pytester):
    result = pytester.runpytest_subprocess("--help")
    for option in (
        "--qdm-model",
        "--qdm-sae",
        "--qdm-bits",
        "--qdm-min-survived",
        "--qdm-baseline",
        "--qdm-no-cache",
    ):
        result.stdout.fnmatch_lines([f"*{option}*"])
    result.stdout.fnmatch_lines(["*QDM audit*", "*(default: 8,7,6,5,4)*"])


def _best_of(args, runs=3):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def test_help_stays_fast(pytester):
    overhead = _best_of(["--help"]) - _best_of(["--help", "-p", "no:qdm"])
    assert overhead < 1.5, f"the plugin adds {overhead:.2f} s to pytest --help"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--qdm-model", "nonesuch"],
            "'nonesuch' is not a preset, a local checkpoint folder or a Hub id like org/name; "
            "known presets: pythia-70m-deduped, gemma-2-2b, gemma-3-4b, tiny",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-min-survived", "int6=0.6"],
            "is not CONDITION[@DOMAIN]:BOUND",
        ),
        (["--qdm-model", "tiny", "--qdm-bits", "8,9"], "--qdm-bits must list bit widths in 2..8"),
        (["--qdm-model", "./no/such/folder", "--qdm-sae", "x/y"], "no such checkpoint folder"),
        (["--qdm-model", "tiny", "--qdm-sae", "./missing-sae"], "no sae_lens folder"),
        (["--qdm-model", "tiny", "--qdm-baseline-fail", "survived"], "METRIC:±AMOUNT"),
        (["--qdm-model", "tiny", "--qdm-schemes", "nf4,nf5"], "'nf5' is not a scheme; use nf4"),
        (["--qdm-model", "tiny", "--qdm-lenses", "token,logit"], "--qdm-lenses: unknown ['logit']"),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune", "0.2,1.5"],
            "--qdm-sae-prune: Input should be less than 1 (got 1.5)",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune", "half"],
            "--qdm-sae-prune expects numbers like 0.1,0.25",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune-method", "l1"],
            "--qdm-sae-prune-method: Input should be 'decoder_norm_x_mean' or 'wanda'",
        ),
        (["--qdm-model", "tiny", "--qdm-top-k", "ten"], "--qdm-top-k expects an integer"),
    ],
)
def test_bad_options_fail_at_configure_with_one_line(pytester, args, message):
    result = pytester.runpytest_inprocess(*args)  # refused before anything loads
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "pytest-qdm:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_the_plugin_refuses_before_loading_anything(pytester, tmp_path):
    binary = tmp_path / "corpus.bin"
    binary.write_bytes(bytes(range(256)))
    for args, line in [
        (["--qdm-bits", ""], "*pytest-qdm: --qdm-bits was given an empty value*"),
        ([f"--qdm-dataset={binary}"], "*pytest-qdm: --qdm-dataset*binary data*"),
    ]:
        result = pytester.runpytest_inprocess(
            "--qdm-model", "tiny", "-p", "no:cacheprovider", *args
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([line])
        assert "Traceback" not in result.stderr.str()
