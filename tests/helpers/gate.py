"""What the pytester end-to-end tests (tests/integration/) share: the quick gate settings and
readers of what a gate run wrote (qdm-report.json, JUnit properties)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

# the bundled model at a small budget: every run with these settings reads one cached result
QUICK = [
    *("--qdm-model", "tiny", "--qdm-tokens", "4096", "--qdm-bits", "8,6,4"),
    *("-p", "no:cacheprovider"),
]
# QUICK without the matched-pruning condition, the lenses and the plots
BARE = ["--qdm-match-bits", "0", "--qdm-lenses", "none", "--qdm-no-plots"]
# one condition, no lenses, no plots: the cheapest run that gates (bounds, gate ends, baselines)
INT6 = [
    *("--qdm-model", "tiny", "--qdm-tokens", "2048", "--qdm-bits", "6", "--qdm-match-bits", "0"),
    *("--qdm-lenses", "none", "--qdm-no-plots", "-p", "no:cacheprovider"),
]


def written_report(folder: Path) -> dict:
    """qdm-report.json as a gate run in ``folder`` wrote it."""
    return json.loads((folder / "qdm-report" / "qdm-report.json").read_text())


def junit_properties(path: Path) -> dict[str, str]:
    """Every <property> of a JUnit XML file, by name."""
    return {p.get("name"): p.get("value") for p in ET.parse(path).iter("property")}
