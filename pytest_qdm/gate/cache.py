"""The on-disk result cache: one protocol report per fingerprint, shared across workers.

A file lock makes parallel workers (pytest-xdist) and concurrent runs wait for the one that
computes; the others read its JSON. Entries are written atomically and checked when read
back (pytest_qdm/cachefiles.py): one that does not check out is discarded with one warning
and recomputed. The cache is best effort: a folder that cannot be written or locked costs
one warning, and the run computes its result without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_qdm.cachefiles import best_effort, read_checked, write_checked
from pytest_qdm.schema.gate import Fingerprint
from pytest_qdm.schema.protocol import ProtocolReport

LOCK_TIMEOUT_S = 6 * 3600


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"protocol-{key}.json"


def cached_report(
    cache_dir: str | Path, key: str, compute: Callable[[], ProtocolReport]
) -> tuple[ProtocolReport, bool]:
    """(report, hit): the cached report for ``key``, else ``compute()`` stored under it."""
    from pytest_qdm.stream.distributed import from_main, rank_and_size

    path = cache_path(cache_dir, key)
    if rank_and_size()[1] > 1:  # torchrun: every rank computes, rank 0 reads and writes
        known = from_main(lambda: read_checked(path, key, ProtocolReport))
        if known is not None:
            return known, True
        report = compute()
        from_main(lambda: best_effort(path, lambda: write_checked(path, key, report)))
        return report, False
    lock = best_effort(path.parent, lambda: _locked(path))
    if lock is None:  # the folder cannot be written: no cache this run
        return compute(), False
    with lock:
        known = read_checked(path, key, ProtocolReport)
        if known is not None:
            return known, True
        report = compute()
        best_effort(path, lambda: write_checked(path, key, report))
        return report, False


def _locked(path: Path):
    """The held lock of ``path``'s entry (OSError when its folder cannot be written)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S).acquire()


def _sources_path(cache_dir: str | Path, sources: str) -> Path:
    return Path(cache_dir) / f"sources-{sources}.json"


def remember_sources(cache_dir: str | Path, sources: str | None, fingerprint: Fingerprint) -> None:
    """Record which fingerprint the run with these input files had (see gate/sources.py)."""
    if sources is None:
        return
    from pytest_qdm.stream.distributed import from_main

    path = _sources_path(cache_dir, sources)
    from_main(lambda: best_effort(path, lambda: write_checked(path, sources, fingerprint)))


def remembered_fingerprint(cache_dir: str | Path, sources: str | None) -> Fingerprint | None:
    """The fingerprint recorded for these input files, if any (unreadable: None)."""
    if sources is None:
        return None
    return read_checked(_sources_path(cache_dir, sources), sources, Fingerprint)
