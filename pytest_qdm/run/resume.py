"""Finished work kept on disk so that a killed run continues where it stopped.

A :class:`Checkpoints` folder (the gate uses ``<cache dir>/partial-<fingerprint>``, one set
of inputs and settings) holds the perplexity phase's results and the feature pass's
finished shards, each written atomically once it completes. A rerun loads them and computes
only what is missing: the same code on the same rows merged in the same order, so the
numbers are those of an uninterrupted run. The folder is removed when the protocol ends.

Files are safetensors (:mod:`pytest_qdm.tensorfile`, no pickle); one that is corrupt,
foreign or from a newer version is discarded with one warning and its part recomputed.
Saving is best effort (docs/reliability.md).
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
        return self.folder / f"{name}{suffix}.safetensors"

    def load(self, name: str) -> Any | None:
        """What was saved under ``name``, or None (nothing saved; unreadable, corrupt or
        foreign: discarded with one warning)."""
        if self.folder is None or not self._path(name).is_file():
            return None
        from pytest_qdm.cachefiles import discarded
        from pytest_qdm.tensorfile import StoredValueError, loads

        path = self._path(name)
        try:
            stored = loads(path.read_bytes())
        except (OSError, StoredValueError) as error:
            discarded(path, str(error))
            return None
        if not (isinstance(stored, dict) and stored.get("name") == self._label(name)):
            discarded(path, "saved for another run or part (its name does not match)")
            return None
        return stored["value"]

    def _label(self, name: str) -> str:
        return f"{self.folder.name}/{self._path(name).name}"

    def save(self, name: str, value: Any) -> None:
        """Best effort: a folder that cannot be written costs one warning, not the run."""
        if self.folder is None:
            return
        from pytest_qdm.cachefiles import best_effort

        best_effort(self._path(name), lambda: self._write(name, value))

    def _write(self, name: str, value: Any) -> None:
        from pytest_qdm.tensorfile import dumps

        data = dumps({"name": self._label(name), "value": value})
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
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
        while self.folder is not None and self._path(f"shard{len(saved)}").is_file():
            shard = self.load(f"shard{len(saved)}")
            if shard is None:  # discarded: the drill-down it carried is gone, start over
                return []
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
