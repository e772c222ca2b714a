"""Token sources: the built-in corpus, local text files and Hugging Face datasets.

Everything an audit reads as text ends up here and leaves as a ``TokenSet``: a LongTensor of
shape ``[n_sequences, context_length]`` (abbreviated ``[n, ctx]``) plus a ``TokenInfo``
record that says where the tokens came from, so that a report can name its token set exactly.

Sources (the ``source`` string of ``read_corpus`` / ``load_tokens``):

- ``"builtin"``: English text that ships with every CPython install, read at run time and
  never copied into the repository: the pydoc help topics (``pydoc_data.topics.topics``)
  and the docstrings of the standard-library modules, parsed with ``ast`` (never imported,
  so no import side effects). Documents are cleaned deterministically, de-duplicated, and
  split by a stable key: a document whose ``sha256(key)`` is 0 mod 10 is held out. The
  held-out split is used for perplexity and SAE quality numbers. The corpus depends on the
  Python version, so every ``Corpus`` carries the sha256 of its text.
- a path to a local text file (e.g. WikiText-2-raw ``wiki.test.txt``); ``split`` is ignored.
- a Hugging Face dataset ``"hf:NAME:CONFIG:SPLIT"`` or ``"NAME:CONFIG:SPLIT"`` (e.g.
  ``"wikitext:wikitext-2-raw-v1:test"``), loaded with ``datasets``, the ``text`` column
  joined with ``"\\n"``. Offline it fails fast and says to pass a local file instead.

This module imports torch only inside functions, so importing it stays cheap.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import socket
import sysconfig
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import pydantic

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_HELDOUT_MODULUS",
    "Corpus",
    "TokenInfo",
    "TokenSet",
    "builtin_corpus",
    "builtin_documents",
    "chunk_tokens",
    "encode_text",
    "load_tokens",
    "prepend_bos_from_sae",
    "read_corpus",
]

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
_HF_PATTERN = re.compile(r"^(?:hf:)?([\w.\-/]+):([\w.\-]*):([\w.\-\[\]:%+]+)$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Corpus:
    """A text corpus: ``name`` says where it came from, ``sha256`` hashes ``text`` (UTF-8)."""

    name: str
    text: str
    sha256: str


class TokenInfo(pydantic.BaseModel, frozen=True):
    """Where a token set came from and how it was cut (JSON-serializable)."""

    source: str
    corpus_sha256: str
    n_sequences: int
    context_length: int
    n_tokens: int
    prepend_bos: bool
    bos_token_id: int | None
    seed: int | None
    split: str


@dataclass(frozen=True)
class TokenSet:
    """Tokens as a LongTensor ``[n_sequences, context_length]`` and their provenance."""

    tokens: torch.Tensor
    info: TokenInfo


# --------------------------------------------------------------------------- built-in corpus


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


@lru_cache(maxsize=2)
def builtin_corpus(split: Literal["train", "heldout"] = "train") -> Corpus:
    """The built-in corpus (pydoc topics + stdlib docstrings), documents joined by a blank line."""
    text = "\n\n".join(t for _, t in builtin_documents(split)) + "\n"
    return Corpus(name=f"builtin:{split}", text=text, sha256=_sha256(text))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- other sources


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _hub_unreachable_reason() -> str | None:
    """A reason string when the Hub is known to be unreachable (checked in <= 3 s), else None."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; do not probe directly
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc})"
    return None


def _read_hf_dataset(name: str, config: str, split: str, source: str) -> Corpus:
    hint = (
        f"cannot load Hugging Face dataset {source!r} (name={name!r}, config={config!r}, "
        f"split={split!r})"
    )
    alternative = "pass a path to a local text file instead (e.g. WikiText-2-raw wiki.test.txt)"
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    reason = _hub_unreachable_reason()
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


def read_corpus(source: str, split: str = "train") -> Corpus:
    """Read a corpus: ``"builtin"``, a local text file path, or ``"hf:NAME:CONFIG:SPLIT"``.

    ``split`` ("train" or "heldout") applies to the built-in corpus only; a file is read
    whole and a dataset's split is part of its name.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise TypeError(
            f"source must be 'builtin', a text file path or 'hf:NAME:CONFIG:SPLIT', got {source!r}"
        )
    if source == "builtin":
        return builtin_corpus(_check_split(split))  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- tokens


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def chunk_tokens(
    ids: Any,
    context_length: int,
    *,
    bos_token_id: int | None,
    max_tokens: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Cut a token stream into non-overlapping rows ``[n, context_length]`` (LongTensor).

    With ``bos_token_id`` each row is ``[bos] + (context_length - 1)`` corpus tokens, else
    ``context_length`` corpus tokens. The ragged tail is dropped. ``max_tokens`` keeps
    ``max(1, max_tokens // context_length)`` rows: the first ones when ``seed`` is None,
    else a seeded random subset, kept in corpus order.
    """
    import torch

    context_length = _check_int("context_length", context_length, 2)
    if bos_token_id is not None:
        _check_int("bos_token_id", bos_token_id, 0)
    if seed is not None:
        _check_int("seed", seed, 0)
    flat = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    body = context_length - (bos_token_id is not None)
    n_rows = flat.numel() // body
    if n_rows == 0:
        raise ValueError(
            f"corpus too short: {flat.numel()} tokens, need at least {body} for one row of "
            f"context_length={context_length}"
        )
    want = n_rows
    if max_tokens is not None:
        want = max(1, _check_int("max_tokens", max_tokens, 1) // context_length)
        if want > n_rows:
            raise ValueError(
                f"corpus too short: max_tokens={max_tokens} needs {want} rows of "
                f"context_length={context_length}, the corpus ({flat.numel()} tokens) gives {n_rows}"
            )
    rows = flat[: n_rows * body].reshape(n_rows, body)
    if seed is None:
        rows = rows[:want]
    else:
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(n_rows, generator=gen)[:want].sort().values
        rows = rows[pick]
    if bos_token_id is not None:
        bos = torch.full((rows.shape[0], 1), bos_token_id, dtype=torch.long)
        rows = torch.cat([bos, rows], dim=1)
    return rows.contiguous()


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (fast path for ``tokenizers`` backends)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"tokenizer must be a transformers tokenizer with .encode, got {type(tokenizer).__name__}"
        )
    return list(tokenizer.encode(text, add_special_tokens=False))


def load_tokens(
    source: str,
    tokenizer: Any,
    *,
    context_length: int,
    max_tokens: int | None = None,
    prepend_bos: bool,
    seed: int | None = None,
    split: str = "train",
) -> TokenSet:
    """Read ``source`` (see ``read_corpus``), tokenize it, and cut it with ``chunk_tokens``."""
    if not isinstance(prepend_bos, bool):
        raise TypeError(f"prepend_bos must be a bool, got {prepend_bos!r}")
    bos_token_id = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    if prepend_bos and bos_token_id is None:
        raise ValueError(
            f"prepend_bos=True but the tokenizer ({type(tokenizer).__name__}) has no "
            "bos_token_id; pass prepend_bos=False or a tokenizer with a BOS token"
        )
    corpus = read_corpus(source, split)
    ids = encode_text(tokenizer, corpus.text)
    tokens = chunk_tokens(
        ids, context_length, bos_token_id=bos_token_id, max_tokens=max_tokens, seed=seed
    )
    if source == "builtin":
        applied_split = split
    elif corpus.name.startswith("hf:"):
        applied_split = corpus.name.rsplit(":", 1)[-1]
    else:
        applied_split = "all"  # a text file is read whole
    info = TokenInfo(
        source=str(source),
        corpus_sha256=corpus.sha256,
        n_sequences=int(tokens.shape[0]),
        context_length=int(tokens.shape[1]),
        n_tokens=int(tokens.numel()),
        prepend_bos=prepend_bos,
        bos_token_id=bos_token_id,
        seed=seed,
        split=applied_split,
    )
    return TokenSet(tokens=tokens, info=info)


def prepend_bos_from_sae(sae: Any, default: bool) -> bool:
    """The SAE's ``cfg.metadata.prepend_bos`` when it is set, else ``default``."""
    if not isinstance(default, bool):
        raise TypeError(f"default must be a bool, got {default!r}")
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        raise TypeError(f"sae must have a .cfg (a sae_lens SAE), got {type(sae).__name__}")
    metadata = getattr(cfg, "metadata", None)
    value = getattr(metadata, "prepend_bos", None) if metadata is not None else None
    if value is None:
        value = getattr(cfg, "prepend_bos", None)  # older sae_lens configs
    return default if value is None else bool(value)
