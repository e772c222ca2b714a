"""Atomic JSON files: a report, a baseline or a cache entry is written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(report: BaseModel, path: Path) -> Path:
    """Write a pydantic model (a report, a baseline) as compact JSON to ``path`` atomically.

    The text goes to a temporary file in the same folder, is flushed to disk, then
    replaces ``path`` with ``os.replace``: readers see the old file or the new one, never
    a partial one. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = report.model_dump_json()
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # as other outputs, not mkstemp's 0600
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
