"""Finished work kept on disk so that a killed run continues where it stopped.

A :class:`Checkpoints` folder (the gate uses ``<cache dir>/partial-<fingerprint>``, so it
belongs to exactly one set of inputs and settings) holds the perplexity phase's results and
the feature pass's finished shards, each written atomically (temporary file, then
``os.replace``) after it completes. A rerun loads them and computes only what is missing;
the numbers are those of an uninterrupted run because every shard is computed by the same
code on the same rows and merged in the same order. Each shard is written once, to its own
file, so saving costs one state per shard; the drill-down buffer that the shards fill
together moves along with the newest shard. Under torch.distributed each rank keeps its
own files. The folder is removed when the protocol finishes.
"""

from __future__ import annotations

import dataclasses
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

    def save_shards(self, states: list) -> None:
        """After each shard of the feature pass: the newest shard's state, with the
        drill-down filled so far (held by ``states[0]``); the shard before it is kept
        without it."""
        newest = len(states) - 1
        self.save(f"shard{newest}", (_without_drilldown(states[newest]), states[0].drilldown))
        if newest:  # written after the newest file, so a kill in between loses nothing
            self.save(f"shard{newest - 1}", (_without_drilldown(states[newest - 1]), None))

    def load_shards(self) -> list:
        """The finished shards' states in order, the drill-down back on the first."""
        saved = []
        while (shard := self.load(f"shard{len(saved)}")) is not None:
            saved.append(shard)
        states = [state for state, _ in saved]
        if saved:
            states[0] = dataclasses.replace(states[0], drilldown=saved[-1][1])
        return states

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _without_drilldown(state):
    return dataclasses.replace(state, drilldown=None)
