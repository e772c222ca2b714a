"""The gate run from outside (pytester subprocesses): offline, one torch thread, and one
fingerprinted result cache for the whole session, shared by the xdist workers (its file
lock makes a second worker wait for the one that computes), as a team's CI runs share it."""

from __future__ import annotations

import os

import pytest

from tests.helpers.gate import INT6, QUICK


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp is per worker; its parent is shared
        base = base.parent
    folder = base / "qdm-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def offline(pytester, monkeypatch):
    """No Hub, one thread, no step summary, and rootdir = the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makeini("[pytest]\n")


@pytest.fixture
def gate(pytester, cache_dir, offline):
    """Run pytest in a subprocess with the quick gate settings and the shared cache."""

    def run(*args, **kwargs):
        return pytester.runpytest_subprocess(
            *QUICK, "--qdm-cache-dir", str(cache_dir), *args, **kwargs
        )

    return run


@pytest.fixture
def gate_int6(pytester, cache_dir, offline):
    """Run pytest in a subprocess with the one-condition gate settings and the shared cache."""

    def run(*args):
        return pytester.runpytest_subprocess(*INT6, "--qdm-cache-dir", str(cache_dir), *args)

    return run
