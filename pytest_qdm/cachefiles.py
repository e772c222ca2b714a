"""The cache is an optimisation, never a cause of failure: files read back that do not check
out are discarded with one warning and recomputed; files that cannot be written (read-only,
full disk, permissions) cost one warning, and the audit and its report go on."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class CacheWarning(UserWarning):
    """A cache or partial-run file was discarded, or could not be written."""


def discarded(path: str | os.PathLike, reason: str) -> None:
    """Warn that ``path`` was not used (``reason``), and remove it so no later run reads it."""
    warnings.warn(
        f"pytest-qdm: ignored {path}: {reason}; recomputing it", CacheWarning, stacklevel=2
    )
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


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
