"""Two-domain text corpus for qdm-tiny v2: prose and code, as the package reads them.

Both domains are pytest-qdm's built-in sources (one implementation,
:mod:`pytest_qdm.load.corpus`): prose = ``builtin`` (pydoc topics and stdlib docstrings),
code = ``builtin:code`` (every stdlib ``*.py`` file but tests and installed packages, in
relative-path order; see :func:`pytest_qdm.load.corpus.code_documents`). A document is held
out when ``sha256(key)[:8] (big endian) % 10 == 0`` (for code the key is the relative path).
"""

from __future__ import annotations

import hashlib

from pytest_qdm.load.corpus import BUILTIN_HELDOUT_MODULUS as HELDOUT_MODULUS
from pytest_qdm.load.corpus import CODE_EXCLUDED_PARTS as EXCLUDED_PARTS
from pytest_qdm.load.corpus import builtin_documents, code_documents

__all__ = ["EXCLUDED_PARTS", "HELDOUT_MODULUS", "domain_text", "sha256"]


def domain_text(domain: str, split: str) -> tuple[str, list[str]]:
    """(joined text, document keys) of one domain ("prose" or "code") and split."""
    docs = builtin_documents(split) if domain == "prose" else code_documents(split)
    return "\n\n".join(t for _, t in docs), [k for k, _ in docs]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
