"""The on-disk result cache: one protocol report per fingerprint, shared across workers.

A file lock makes parallel workers (pytest-xdist) wait for the one that computes; the
others read its JSON. Files are written atomically (see :func:`pytest_qdm.report.write_json`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_qdm.schema.gate import Fingerprint
from pytest_qdm.schema.protocol import ProtocolReport

LOCK_TIMEOUT_S = 6 * 3600


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"protocol-{key}.json"


def cached_report(
    cache_dir: str | Path, key: str, compute: Callable[[], ProtocolReport]
) -> tuple[ProtocolReport, bool]:
    """(report, hit): the cached report for ``key``, else ``compute()`` stored under it."""
    from filelock import FileLock

    from pytest_qdm.stream.distributed import from_main, rank_and_size

    path = cache_path(cache_dir, key)
    if rank_and_size()[1] > 1:  # torchrun: every rank computes, rank 0 reads and writes
        from pytest_qdm.report import write_json

        text = from_main(lambda: path.read_text() if path.exists() else None)
        if text is not None:
            return ProtocolReport.from_json(text), True
        report = compute()
        from_main(lambda: write_json(report, path))
        return report, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        if path.exists():
            return ProtocolReport.from_json(path.read_text()), True
        from pytest_qdm.report import write_json

        report = compute()
        write_json(report, path)
        return report, False


def _sources_path(cache_dir: str | Path, sources: str) -> Path:
    return Path(cache_dir) / f"sources-{sources}.json"


def remember_sources(cache_dir: str | Path, sources: str | None, fingerprint: Fingerprint) -> None:
    """Record which fingerprint the run with these input files had (see gate/sources.py)."""
    if sources is None:
        return
    from pytest_qdm.report import write_json
    from pytest_qdm.stream.distributed import from_main

    from_main(lambda: write_json(fingerprint, _sources_path(cache_dir, sources)))


def remembered_fingerprint(cache_dir: str | Path, sources: str | None) -> Fingerprint | None:
    """The fingerprint recorded for these input files, if any (unreadable: None)."""
    path = None if sources is None else _sources_path(cache_dir, sources)
    if path is None or not path.is_file():
        return None
    try:
        return Fingerprint.model_validate_json(path.read_text())
    except ValueError:
        return None
