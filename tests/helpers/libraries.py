"""Optional format libraries: a test that needs one skips, naming the pip command."""

from __future__ import annotations

import pytest


def needs(module: str, extra: str):
    """Import a format's library, or skip with the pip command that installs it."""
    return pytest.importorskip(module, reason=f"pip install 'pytest-qdm[{extra}]'")
