"""Two different gate runs started together on one cache folder and one report folder:
each prints its own report and verdict, and the folder holds one run's complete files.

Each run waits, before printing its summary, until both have written their reports, so one
of them always finds the other's files in the folder (the case that used to print the other
run's report and verdict)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

FAST = [
    "--qdm-model=tiny",
    "--qdm-tokens=256",
    "--qdm-context=32",
    "--qdm-lenses=none",
    "--qdm-drilldown=0",
    "--qdm-match-bits=0",
    "--qdm-no-plots",
    "-p",
    "no:cacheprovider",
    "-q",
]
BOTH_WRITTEN_FIRST = """
import os, pathlib, time
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(config):
    sync = pathlib.Path(os.environ["QDM_SYNC"])
    (sync / os.environ["QDM_RUN"]).touch()
    deadline = time.monotonic() + 300
    while len(list(sync.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
"""
RUNS = {
    "int8": ["--qdm-bits=8", "--qdm-min-survived=int8:0.0"],  # passes
    "int4": ["--qdm-bits=4", "--qdm-min-survived=int4:1.0"],  # fails
}


def test_two_runs_sharing_folders_each_print_and_keep_their_own(tmp_path):
    (tmp_path / "conftest.py").write_text(BOTH_WRITTEN_FIRST)
    (tmp_path / "sync").mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 97} and then some text" for i in range(400)))
    shared = [f"--qdm-cache-dir={tmp_path / 'cache'}", f"--qdm-report-dir={tmp_path / 'out'}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    environment.pop("GITHUB_STEP_SUMMARY", None)
    sync = {"QDM_SYNC": str(tmp_path / "sync")}
    processes = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                *FAST,
                *args,
                f"--qdm-dataset={corpus}",
                *shared,
                f"--junitxml={tmp_path / name}.xml",
            ],  # fmt: skip
            cwd=tmp_path,
            env={**environment, **sync, "QDM_RUN": name},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in RUNS.items()
    }
    outputs = {name: process.communicate(timeout=600)[0] for name, process in processes.items()}
    for name, other in [("int8", "int4"), ("int4", "int8")]:
        output, junit = outputs[name], ET.parse(tmp_path / f"{name}.xml")
        assert f"rtn-{name}" in output and f"rtn-{other}" not in output, output
        failed = [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None]
        expected = ["min_survived[rtn-int4]"] if name == "int4" else []
        assert failed == expected, output
        assert processes[name].returncode == (1 if failed else 0), output
    out = tmp_path / "out"
    report = json.loads((out / "qdm-report.json").read_text())
    verdicts = json.loads((out / "verdicts.json").read_text())
    conditions = {row["condition"] for row in report["sweep"]} - {"reference"}
    owner = "int8" if "rtn-int8" in conditions else "int4"
    assert [v[0] for v in verdicts] == [f"min_survived[rtn-{owner}]"]
    assert f"rtn-{owner}" in (out / "qdm-summary.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
