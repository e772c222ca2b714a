"""The README's Python examples run as pasted."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
pytest_plugins = ["pytester"]


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_library_example_runs():
    namespace: dict = {}
    exec(compile(python_block('qdm.load_preset("tiny")'), "README.md", "exec"), namespace)
    assert namespace["result"].conditions["rtn-int6"].summary.survived_pct is not None
    assert namespace["report"].audit.conditions
    assert namespace["small_sae"].cfg.d_sae < namespace["bundle"].sae.cfg.d_sae


def test_the_fixture_examples_run(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_readme=python_block("def test_int6_release(qdm_audit)"))
    result = pytester.runpytest_subprocess(
        *("--qdm-model", "tiny", "--qdm-tokens", "4096", "--qdm-bits", "8,6,4"),
        *("--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-cache", "--qdm-no-plots"),
        *("-p", "no:cacheprovider", "test_readme.py"),
    )
    # every example runs to its assertion: a gate may fail on survival, never on an error
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == 0
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 4, result.stdout.str()
    assert not re.search(r"^E\s+(TypeError|ValueError|NameError)", result.stdout.str(), re.M)
