"""The README's and the docs' Python examples run as pasted."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.gate import BARE

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
pytest_plugins = ["pytester"]


def python_block(containing: str) -> str:
    blocks = [
        block
        for page in PAGES
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    ]
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_library_example_runs():
    namespace: dict = {}
    exec(compile(python_block('qdm.load_preset("tiny")'), "docs/fixtures.md", "exec"), namespace)
    assert namespace["result"].conditions["rtn-int6"].summary.survived_pct is not None
    assert namespace["report"].audit.conditions
    assert namespace["small_sae"].cfg.d_sae < namespace["bundle"].sae.cfg.d_sae


def test_the_fixture_examples_run(pytester, gate):
    docs = python_block("def test_int6_release(qdm_audit)")
    readme = python_block("def test_probe_features_survive_int8(qdm_audit)")
    pytester.makepyfile(test_readme=docs + "\n\n" + readme)
    result = gate(*BARE, "test_readme.py")
    # every example runs to its assertion: a gate may fail on survival, never on an error
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == 0
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 5, result.stdout.str()
    assert not re.search(r"^E\s+(TypeError|ValueError|NameError)", result.stdout.str(), re.M)
    # the claims pinned on features the bundled model really uses hold, as pasted
    assert "FAILED test_readme.py::test_probe_features_survive_int8" not in result.stdout.str()
    assert "FAILED test_readme.py::test_probe_features " not in result.stdout.str()


def test_the_readme_nf4_checkpoint_is_what_the_gate_reads(tmp_path, monkeypatch):
    """The shipped-checkpoint script writes the bitsandbytes NF4 folder the command gates."""
    import pytest

    pytest.importorskip("bitsandbytes")
    from pytest_qdm.load.checkpoints import inspect_checkpoint

    monkeypatch.chdir(tmp_path)
    exec(compile(python_block('model.save_pretrained("bnb-nf4")\nAutoTok'), "README", "exec"), {})
    info = inspect_checkpoint(tmp_path / "bnb-nf4")
    assert (info.quant_method, info.scheme) == ("bitsandbytes", "nf4")
