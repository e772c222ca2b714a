"""The README's option table names every option the plugin has, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_qdm.options import option_fields

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_option_is_in_the_readme_table():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Options") : text.index("## Fixtures")]
    documented = set(re.findall(r"`(--qdm-[a-z-]+)", table))
    flags = {f"--qdm-{meta['flag']}" for _, meta, _ in option_fields()}
    assert flags - documented == set(), "options missing from the README table"
    assert documented - flags == set(), "README documents options that do not exist"
