"""Token sources: the built-in corpus, local text files and Hugging Face datasets.

Everything an audit reads as text leaves here as a ``TokenSet``: a LongTensor
``[n_sequences, context_length]`` plus a ``TokenInfo`` record naming where it came from.
Sources (the ``source`` string of ``read_corpus`` / ``load_tokens``): ``"builtin"``
(``"builtin:prose"``: CPython's pydoc topics and standard-library docstrings, parsed with
``ast``, never imported), ``"builtin:code"`` (the standard library's source), a local text
file, or a Hugging Face dataset ``"hf:NAME:CONFIG:SPLIT"`` (offline it fails fast and says
to pass a local file). Built-in documents are split train / held-out by ``sha256(key)``
mod 10 and every ``Corpus`` carries the sha256 of its text. A mapping of labels to sources
reads labelled domains, budget split equally (docs/definitions.md, "Survival per domain").

This module imports torch only inside functions, so importing it stays cheap.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from pytest_qdm.load.corpus import BUILTIN_SOURCES, read_corpus

if TYPE_CHECKING:
    import torch

__all__ = [
    "DomainTokens",
    "TokenInfo",
    "TokenSet",
    "chunk_tokens",
    "encode_text",
    "load_tokens",
    "prepend_bos_from_sae",
]


LABEL_PATTERN = r"[A-Za-z][\w-]*"  # a domain label, here and in gates (int6@code:0.6)
DOMAIN_LABEL = re.compile(rf"^{LABEL_PATTERN}$")


class DomainTokens(pydantic.BaseModel, frozen=True):
    """One labelled domain of a token set: its source and how many rows it holds."""

    label: str
    source: str
    corpus_sha256: str
    n_sequences: int


class TokenInfo(pydantic.BaseModel, frozen=True):
    """Where a token set came from and how it was cut (JSON-serializable). ``domains``:
    the labelled domains in row order (empty for one unlabelled source)."""

    source: str
    corpus_sha256: str
    n_sequences: int
    context_length: int
    n_tokens: int
    prepend_bos: bool
    bos_token_id: int | None
    seed: int | None
    split: str
    domains: tuple[DomainTokens, ...] = ()


@dataclass(frozen=True)
class TokenSet:
    """Tokens as a LongTensor ``[n_sequences, context_length]`` and their provenance."""

    tokens: torch.Tensor
    info: TokenInfo

    @property
    def domain_rows(self) -> dict[str, int]:
        """Rows per domain label, in row order (empty without labelled domains)."""
        return {d.label: d.n_sequences for d in self.info.domains}


# --------------------------------------------------------------------------- built-in corpus


# --------------------------------------------------------------------------- other sources


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
    source: str | Mapping[str, str],
    tokenizer: Any,
    *,
    context_length: int,
    max_tokens: int | None = None,
    prepend_bos: bool,
    seed: int | None = None,
    split: str = "train",
) -> TokenSet:
    """Read ``source`` (see ``read_corpus``), tokenize it, and cut it with ``chunk_tokens``.

    ``source`` may map domain labels to sources (``{"prose": "builtin", "code": PATH}``):
    each domain gets ``max_tokens // len(source)`` of the budget and its rows follow the
    previous domain's."""
    if isinstance(source, Mapping):
        return _load_domains(
            dict(source),
            tokenizer,
            context_length=context_length,
            max_tokens=max_tokens,
            prepend_bos=prepend_bos,
            seed=seed,
            split=split,
        )
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
    if source in BUILTIN_SOURCES:
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


def check_domains(sources: Mapping[str, str]) -> None:
    """ValueError for domain labels that cannot name a domain (in gates, JUnit properties)."""
    if not sources:
        raise ValueError("no domains given; map a label to a source, e.g. {'code': 'builtin:code'}")
    for label in sources:
        if not isinstance(label, str) or not DOMAIN_LABEL.match(label):
            raise ValueError(
                f"domain label {label!r} must start with a letter and hold only letters, "
                "digits, '_' or '-' (e.g. code, prose)"
            )


def _load_domains(sources: dict[str, str], tokenizer: Any, *, max_tokens, **cut) -> TokenSet:
    import torch

    check_domains(sources)
    share = None if max_tokens is None else max(1, max_tokens // len(sources))
    sets = {
        label: load_tokens(src, tokenizer, max_tokens=share, **cut)
        for label, src in sources.items()
    }
    tokens = torch.cat([s.tokens for s in sets.values()])
    first = next(iter(sets.values())).info
    domains = tuple(
        DomainTokens(
            label=label,
            source=s.info.source,
            corpus_sha256=s.info.corpus_sha256,
            n_sequences=s.info.n_sequences,
        )
        for label, s in sets.items()
    )
    joined = "".join(f"{d.label}={d.corpus_sha256};" for d in domains)
    info = first.model_copy(
        update={
            "source": ", ".join(f"{d.label}={d.source}" for d in domains),
            "corpus_sha256": hashlib.sha256(joined.encode()).hexdigest(),
            "n_sequences": int(tokens.shape[0]),
            "n_tokens": int(tokens.numel()),
            "split": ", ".join(dict.fromkeys(s.info.split for s in sets.values())),
            "domains": domains,
        }
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
