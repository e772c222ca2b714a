"""Text corpora: the built-in ones read from the running interpreter (``builtin`` = prose:
CPython's documentation; ``builtin:code``: its standard-library source), local text files,
and Hugging Face datasets (``hf:NAME:CONFIG:SPLIT``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sysconfig
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pytest_qdm.load.hub import OFFLINE_VARIABLES, env_true, offline_reason

#: A built-in document is held out when int(sha256(key)) % BUILTIN_HELDOUT_MODULUS == 0.
BUILTIN_HELDOUT_MODULUS = 10


_SPLITS = ("train", "heldout")


_MIN_DOC_CHARS = 40


#: Standard-library folders and packages whose docstrings are not read (tests, GUI demos,
#: generated codec tables, third-party installs).
_EXCLUDED_PARTS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "turtledemo",
        "encodings",
        "lib2to3",
        "ensurepip",
    }
)


#: Standard-library path parts whose source is not in the ``builtin:code`` domain.
CODE_EXCLUDED_PARTS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)

#: The built-in sources: prose (documentation) and code (standard-library source).
BUILTIN_SOURCES = {"builtin": "prose", "builtin:prose": "prose", "builtin:code": "code"}

_HF_PATTERN = re.compile(r"^(?:hf:)?([\w.\-/]+):([\w.\-]*):([\w.\-\[\]:%+]+)$")


@dataclass(frozen=True)
class Corpus:
    """A text corpus: ``name`` says where it came from, ``sha256`` hashes ``text`` (UTF-8)."""

    name: str
    text: str
    sha256: str


def _clean(text: str) -> str:
    """Deterministic cleaning: NFC, ``\\n`` line ends, no tabs or trailing spaces, <= 1 blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.expandtabs(8).rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip()


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths().get("stdlib") or Path(os.__file__).parent)


def _module_files(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of the standard library's .py files, sorted by name."""
    found: list[tuple[str, Path]] = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        parts = list(rel.parts[:-1]) + ([] if rel.stem == "__init__" else [rel.stem])
        if not parts or any(p in _EXCLUDED_PARTS or p.startswith("test_") for p in parts):
            continue
        if not all(p.isidentifier() for p in parts):
            continue
        found.append((".".join(parts), path))
    return sorted(found)


def _docstrings(tree: ast.AST, prefix: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) in source order for a module, its classes and functions."""
    out: list[tuple[str, str]] = []
    doc = ast.get_docstring(tree, clean=True)  # type: ignore[arg-type]
    if doc:
        out.append((prefix, doc))
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            out.extend(_docstrings(node, f"{prefix}.{node.name}"))
    return out


def builtin_source_files(domain: str = "prose") -> list[Path]:
    """The files a built-in domain is read from (to identify it without parsing them)."""
    if domain == "code":
        return [path for _, path in _code_files()]
    from pydoc_data import topics

    return [path for _, path in _module_files(_stdlib_dir())] + [Path(topics.__file__)]


def _code_files() -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of the stdlib ``.py`` files of the code domain, by path."""
    root = _stdlib_dir()
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(p in CODE_EXCLUDED_PARTS for p in rel.parts) or rel.name.startswith("test_"):
            continue
        found.append((rel.as_posix(), path))
    return sorted(found)


def code_documents(split: Literal["train", "heldout"] = "train") -> list[tuple[str, str]]:
    """The code domain as (``src:<relative path>``, source text) documents of one split:
    every stdlib ``.py`` file but tests and installed packages, in path order, line ends
    normalised, tabs expanded, trailing spaces stripped (files that are not UTF-8 are
    skipped). Held out by the same rule as the prose, on the relative path."""
    want_heldout = _check_split(split) == "heldout"
    docs = []
    for rel, path in _code_files():
        if _is_heldout(rel) != want_heldout:
            continue
        try:
            text = path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except (OSError, UnicodeDecodeError):
            continue
        text = "\n".join(line.expandtabs(8).rstrip() for line in text.split("\n")).strip("\n")
        if text:
            docs.append((f"src:{rel}", text))
    return docs


@lru_cache(maxsize=1)
def _all_builtin_documents() -> tuple[tuple[str, str], ...]:
    """Every built-in document as (stable key, cleaned text), de-duplicated by text."""
    from pydoc_data.topics import topics

    docs: list[tuple[str, str]] = [(f"topic:{k}", topics[k]) for k in sorted(topics)]
    for module, path in _module_files(_stdlib_dir()):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
            continue
        docs.extend((f"doc:{module}:{q}", d) for q, d in _docstrings(tree, module))
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for key, raw in docs:
        text = _clean(raw)
        if len(text) < _MIN_DOC_CHARS or text in seen:
            continue
        seen.add(text)
        out.append((key, text))
    return tuple(out)


def _is_heldout(key: str) -> bool:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUILTIN_HELDOUT_MODULUS == 0


def _check_split(split: object) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return str(split)


def builtin_documents(
    split: Literal["train", "heldout"] = "train",
) -> list[tuple[str, str]]:
    """The built-in corpus as (stable key, text) documents of one split, in corpus order."""
    want_heldout = _check_split(split) == "heldout"
    return [(k, t) for k, t in _all_builtin_documents() if _is_heldout(k) == want_heldout]


@lru_cache(maxsize=4)
def builtin_corpus(
    split: Literal["train", "heldout"] = "train", domain: Literal["prose", "code"] = "prose"
) -> Corpus:
    """A built-in domain, documents joined by a blank line: prose (pydoc topics + stdlib
    docstrings) or code (stdlib source, :func:`code_documents`)."""
    if domain == "code":
        text = "\n\n".join(t for _, t in code_documents(split))
        return Corpus(name=f"builtin:code:{split}", text=text, sha256=_sha256(text))
    text = "\n\n".join(t for _, t in builtin_documents(split)) + "\n"
    return Corpus(name=f"builtin:{split}", text=text, sha256=_sha256(text))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_hf_dataset(name: str, config: str, split: str, source: str) -> Corpus:
    hint = (
        f"cannot load Hugging Face dataset {source!r} (name={name!r}, config={config!r}, "
        f"split={split!r})"
    )
    alternative = "pass a path to a local text file instead (e.g. WikiText-2-raw wiki.test.txt)"
    offline = any(env_true(v) for v in OFFLINE_VARIABLES)
    reason = offline_reason()
    if reason is not None and not offline:  # offline mode may still find a cached copy
        raise RuntimeError(
            f"{hint}: the Hub is unreachable: {reason}; {alternative}, "
            "or set HF_HUB_OFFLINE=1 to use a cached copy"
        )
    try:
        import datasets
    except ImportError as exc:
        raise RuntimeError(
            f"{hint}: the 'datasets' package is not installed; {alternative}"
        ) from exc
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ...)
        where = f" ({reason})" if reason else ""
        raise RuntimeError(f"{hint}{where}: {type(exc).__name__}: {exc}; {alternative}") from exc
    if "text" not in ds.column_names:
        raise ValueError(f"{hint}: expected a 'text' column, got columns {ds.column_names}")
    text = "\n".join(ds["text"])
    return Corpus(name=f"hf:{name}:{config}:{split}", text=text, sha256=_sha256(text))


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot name a corpus (checked without reading it), or None."""
    if source in BUILTIN_SOURCES or Path(source).expanduser().is_file():
        return None
    if Path(source).expanduser().is_dir():
        return f"{source!r} is a directory; expected a text file"
    if source.startswith("hf:") or _HF_PATTERN.match(source):
        if _HF_PATTERN.match(source):
            return None
        return f"{source!r} is malformed; expected hf:NAME:CONFIG:SPLIT (e.g. hf:wikitext:wikitext-2-raw-v1:test)"
    return (
        f"{source!r} is not builtin, builtin:code, an existing text file, or hf:NAME:CONFIG:SPLIT"
    )


def read_corpus(source: str, split: str = "train") -> Corpus:
    """Read a corpus: ``"builtin"`` (prose, also ``"builtin:prose"``), ``"builtin:code"``,
    a local text file path, or ``"hf:NAME:CONFIG:SPLIT"``.

    ``split`` ("train" or "heldout") applies to the built-in corpora only; a file is read
    whole and a dataset's split is part of its name.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise TypeError(
            "source must be 'builtin', 'builtin:code', a text file path or "
            f"'hf:NAME:CONFIG:SPLIT', got {source!r}"
        )
    if source in BUILTIN_SOURCES:
        return builtin_corpus(_check_split(split), BUILTIN_SOURCES[source])  # type: ignore[arg-type]
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_bytes().decode("utf-8")  # no newline translation: hash the file as is
        return Corpus(name=str(path), text=text, sha256=_sha256(text))
    if path.is_dir():
        raise ValueError(f"source {source!r} is a directory; expected a text file")
    match = _HF_PATTERN.match(source)
    if source.startswith("hf:") or match:
        if match is None:
            raise ValueError(
                f"Hugging Face source {source!r} is malformed; expected 'hf:NAME:CONFIG:SPLIT' "
                "(e.g. 'hf:wikitext:wikitext-2-raw-v1:test')"
            )
        return _read_hf_dataset(*match.groups(), source=source)
    raise FileNotFoundError(
        f"text file not found: {str(path)!r} (source {source!r}; expected 'builtin', an "
        "existing text file, or 'hf:NAME:CONFIG:SPLIT')"
    )
