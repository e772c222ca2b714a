"""Where the engine's time goes: exclusive wall-clock timers wrapped around its parts.

The wrappers are installed only inside :func:`engine_timers` and removed afterwards; they
add a few ``perf_counter`` calls per encode block, nothing per token. Parts that a version
of the engine lacks are skipped, so an older engine (bench_engine_versions.py) profiles too.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager

FORWARD = "forward to the read-out layer"
ENCODE = "SAE encode (full width)"
NONZERO = "nonzero + gather"
SUMS = "float64 scatter sums"
MERGE = "Chan merge"
SWAP = "weight swap"
BATCH_STATS = "batch statistics (union mask, nonzero, sums)"  # the engine before issue 7


def _parts(engine, stats):
    """(owner, attribute, category); categories are exclusive (nested time goes inward)."""
    wanted = [
        (engine.Readout, "__call__", FORWARD),
        (engine, "encode", ENCODE),
        (getattr(stats, "Entries", None), "of", NONZERO),
        (getattr(stats, "Entries", None), "at", NONZERO),
        (getattr(stats, "Entries", None), "cat", NONZERO),
        (getattr(stats, "PairedSums", None), "add", SUMS),
        (getattr(stats, "PairedSums", None), "reference", SUMS),
        (stats.ReferenceStats, "of_entries", SUMS),
        (getattr(stats, "PairedSums", None), "stats", MERGE),
        (stats.PairedStats, "of_batch", BATCH_STATS),
        (stats.ReferenceStats, "of_batch", BATCH_STATS),
        (stats.PairedStats, "merge", MERGE),
        (stats.ReferenceStats, "merge", MERGE),
    ]
    return [(o, n, c) for o, n, c in wanted if o is not None and n in vars(o)]


class Timers:
    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []

    def wrap(self, original, category: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.totals[category] += elapsed - self._stack.pop()
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    def wrap_context(self, original):
        @contextmanager
        def timed(*args, **kwargs):
            manager = original(*args, **kwargs)
            start = time.perf_counter()
            manager.__enter__()
            self.totals[SWAP] += time.perf_counter() - start
            try:
                yield
            finally:
                start = time.perf_counter()
                manager.__exit__(*sys.exc_info())
                self.totals[SWAP] += time.perf_counter() - start

        return timed


def _swapper(engine):
    """The module whose ``applied`` swaps a condition's weights in: the engine itself in
    older versions, the conditions module (``Condition.running``) since the compress split."""
    if hasattr(engine, "applied"):
        return engine
    import pytest_qdm.compress.conditions as conditions

    return conditions


@contextmanager
def engine_timers(engine=None, stats=None):
    """Yield a :class:`Timers` that accumulates while the engine runs inside the block."""
    if engine is None:
        import pytest_qdm.stream.engine as engine
        import pytest_qdm.stream.stats as stats
    timers = Timers()
    parts = _parts(engine, stats)
    saved = [(owner, name, vars(owner)[name]) for owner, name, _ in parts]
    swapper = _swapper(engine)
    saved.append((swapper, "applied", swapper.applied))
    try:
        for owner, name, category in parts:
            setattr(owner, name, timers.wrap(getattr(owner, name), category))
        swapper.applied = timers.wrap_context(swapper.applied)
        yield timers
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
