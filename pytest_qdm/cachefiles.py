"""The cache is an optimisation, never a cause of failure: files read back that do not check
out are discarded with one warning and recomputed; files that cannot be written (read-only,
full disk, permissions) cost one warning, and the audit and its report go on.

JSON cache entries (:func:`write_checked`) carry the key they were written for and the
sha256 of their content: a truncated, edited, foreign or newer-schema entry is discarded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from pytest_qdm.jsonfile import write_json
from pytest_qdm.schema.protocol import SCHEMA_VERSION

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class CacheWarning(UserWarning):
    """A cache or partial-run file was discarded, or could not be written."""


def discarded(path: str | os.PathLike, reason: str) -> None:
    """Warn that ``path`` was not used (``reason``), and remove it so no later run reads it."""
    warnings.warn(
        f"pytest-qdm: ignored {path}: {reason}; recomputing it", CacheWarning, stacklevel=2
    )
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def best_effort(path: str | os.PathLike, write: Callable[[], T]) -> T | None:
    """``write()``; an OSError becomes one warning naming ``path`` (and None)."""
    try:
        return write()
    except OSError as error:
        reason = error.strerror or str(error)
        warnings.warn(
            f"pytest-qdm: could not write the cache file {path} ({reason}); "
            "the audit goes on without it",
            CacheWarning,
            stacklevel=2,
        )
        return None


def write_checked(path: str | os.PathLike, key: str, record: BaseModel) -> None:
    """``record`` as JSON under ``path`` (atomically), with the key it belongs to and the
    sha256 of its text, so :func:`read_checked` can tell a corrupt or foreign file."""
    text = record.model_dump_json()
    entry = _Entry(key=key, sha256=hashlib.sha256(text.encode()).hexdigest(), record=text)
    write_json(entry, Path(path))


def read_checked(path: str | os.PathLike, key: str, kind: type[M]) -> M | None:
    """The ``kind`` stored by :func:`write_checked` under ``key``; None when there is no
    file, and when it does not check out (discarded with one warning)."""
    path = Path(path)
    try:
        entry = _Entry.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        discarded(path, f"not a readable pytest-qdm cache entry ({_first_line(error)})")
        return None
    if entry.key != key:
        discarded(path, f"written for {entry.key}, not {key}")
        return None
    if hashlib.sha256(entry.record.encode()).hexdigest() != entry.sha256:
        discarded(path, "content does not match its sha256 (corrupt or edited)")
        return None
    try:
        record = kind.model_validate_json(entry.record)
    except ValueError as error:
        discarded(path, f"not a {kind.__name__} of this version ({_first_line(error)})")
        return None
    version = getattr(record, "schema_version", None)
    if version is not None and version > SCHEMA_VERSION:
        discarded(path, f"schema_version {version} is newer than this pytest-qdm's")
        return None
    return record


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    sha256: str
    record: str  # the record's JSON text, digested as written


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
