"""Two different gate runs started together on one cache folder and one report folder:
each prints its own report and verdict, and the folder holds one run's complete files."""

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
RUNS = {
    "int8": ["--qdm-bits=8", "--qdm-min-survived=int8:0.0"],  # passes
    "int4": ["--qdm-bits=4", "--qdm-min-survived=int4:1.0"],  # fails
}


def test_two_runs_sharing_folders_each_print_and_keep_their_own(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 97} and then some text" for i in range(400)))
    shared = [f"--qdm-cache-dir={tmp_path / 'cache'}", f"--qdm-report-dir={tmp_path / 'out'}"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    environment.pop("GITHUB_STEP_SUMMARY", None)
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
            ],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
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
