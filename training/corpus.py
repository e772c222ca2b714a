"""Two-domain text corpus for qdm-tiny v2: prose (pytest_qdm builtin docs) + stdlib source code.

Code domain selection rule (deterministic for a given Python install):

* every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, recursively, sorted by
  relative POSIX path;
* skipped when any path part is in ``EXCLUDED_PARTS`` (``test``, ``tests``, ``idle_test``,
  ``site-packages``, ``__pycache__``, ...) or the file name starts with ``test_``;
* files that do not decode as UTF-8 are skipped; text is normalised to ``\\n`` line ends,
  tabs expanded to 8 spaces, trailing whitespace stripped;
* a file is held out when ``sha256(relative_path)[:8] (big endian) % 10 == 0``.

Files are joined by a blank line in path order.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

EXCLUDED_PARTS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
HELDOUT_MODULUS = 10


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(rel: str) -> bool:
    digest = hashlib.sha256(rel.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def source_files(split: str) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of the selected stdlib .py files of ``split``."""
    root = stdlib_dir()
    out = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_PARTS for part in rel.parts) or rel.name.startswith("test_"):
            continue
        key = rel.as_posix()
        if is_heldout(key) == (split == "heldout"):
            out.append((key, path))
    return out


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.expandtabs(8).rstrip() for line in text.split("\n")).strip("\n")


def code_documents(split: str) -> list[tuple[str, str]]:
    docs = []
    for key, path in source_files(split):
        try:
            text = _clean(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            docs.append((f"src:{key}", text))
    return docs


def prose_documents(split: str) -> list[tuple[str, str]]:
    from pytest_qdm.load import corpus as data

    return data.builtin_documents(split)


def domain_text(domain: str, split: str) -> tuple[str, list[str]]:
    """(joined text, document keys) of one domain ("prose" or "code") and split."""
    docs = prose_documents(split) if domain == "prose" else code_documents(split)
    return "\n\n".join(t for _, t in docs), [k for k, _ in docs]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
