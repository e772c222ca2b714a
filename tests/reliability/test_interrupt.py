"""Ctrl-C part-way through the gate: pytest's clean interruption, no half-written files, and
the finished work kept for the rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

from pytest_qdm.run.resume import Checkpoints

SLOW_SHARDS = """
import time
import pytest_qdm.stream.passes as passes

real = passes.run_pass

def slow(*args, **kwargs):
    out = real(*args, **kwargs)
    time.sleep(2)  # room to interrupt between shards
    return out

passes.run_pass = slow
"""


def test_sigint_stops_cleanly_and_keeps_the_finished_shards(tmp_path):
    (tmp_path / "conftest.py").write_text(SLOW_SHARDS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 97} and then some text" for i in range(400)))
    cache, out = tmp_path / "cache", tmp_path / "out"
    command = [sys.executable, "-m", "pytest", "--qdm-model=tiny", "--qdm-tokens=256"]
    command += ["--qdm-context=32", "--qdm-bits=8", "--qdm-match-bits=0", "--qdm-lenses=none"]
    command += [f"--qdm-dataset={corpus}", f"--qdm-cache-dir={cache}", f"--qdm-report-dir={out}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [*command, "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(cache.glob("partial-*/shard0.safetensors")):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, output  # pytest's ExitCode.INTERRUPTED
    assert "KeyboardInterrupt" in output and "Traceback (most recent call last)" not in output
    assert not (out / "qdm-report.json").exists()
    temporary = (".staging", ".shard", ".perplexity", ".protocol")
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith(temporary)]
    (partial,) = cache.glob("partial-*")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file that does not check out would warn
        assert Checkpoints(partial).load_shards() and Checkpoints(partial).load("perplexity")
