"""Finished work kept on disk so that a killed run continues where it stopped.

A :class:`Checkpoints` folder (the gate uses ``<cache dir>/partial-<fingerprint>``, so it
belongs to exactly one set of inputs and settings) holds the perplexity phase's results and
the feature pass's finished shards, each written atomically (temporary file, then
``os.replace``) after it completes. A rerun loads them and computes only what is missing;
the numbers are those of an uninterrupted run because every shard is computed by the same
code on the same rows and merged in the same order. Under torch.distributed each rank
keeps its own files. The folder is removed when the protocol finishes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


class Checkpoints:
    """Named, atomically written results under ``folder``; ``folder=None`` keeps nothing."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder)

    def _path(self, name: str) -> Path:
        from pytest_qdm.stream.distributed import rank_and_size

        rank, size = rank_and_size()
        suffix = f"-rank{rank}of{size}" if size > 1 else ""
        return self.folder / f"{name}{suffix}.pt"

    def load(self, name: str) -> Any | None:
        """What was saved under ``name``, or None (nothing saved, or unreadable)."""
        if self.folder is None or not self._path(name).is_file():
            return None
        import torch

        try:
            return torch.load(self._path(name), weights_only=False)
        except Exception:  # a file from another version of the code: recompute
            return None

    def save(self, name: str, value: Any) -> None:
        if self.folder is None:
            return
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(value, file)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
