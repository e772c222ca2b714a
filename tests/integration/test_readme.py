"""The README is a front door (short, links that resolve) and the options reference is
generated from the option model, so neither can drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_qdm.options import option_fields
from pytest_qdm.options_doc import MARKER, options_table, render

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_the_options_reference_names_every_option_and_no_other():
    page = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    assert MARKER in page  # filled at build time by tools/mkdocs_hooks.py
    table = render(page)
    documented = set(re.findall(r"`(--qdm-[a-z0-9-]+)", table[table.index("| option |") :]))
    flags = {f"--qdm-{meta['flag']}" for _, meta, _ in option_fields()}
    assert documented == flags
    assert "| `--qdm-quick` | `qdm_quick` | off | a fast demo" in options_table()


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 12_500, "the README is a front door; the manual is docs/"
    for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text):
        assert (ROOT / target).is_file(), target
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in re.findall(r":\s+(\S+\.md)$", nav, re.M):
        assert (ROOT / "docs" / page).is_file(), page  # mkdocs --strict would refuse it
