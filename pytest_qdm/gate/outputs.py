"""The gate's files: JSON report, verdicts, markdown (also to $GITHUB_STEP_SUMMARY), plots."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pytest_qdm.options import QdmOptions
from pytest_qdm.schema.gate import Verdict
from pytest_qdm.schema.protocol import ProtocolReport


def write_outputs(
    report: ProtocolReport, verdicts: list[Verdict], options: QdmOptions
) -> list[Path]:
    """JSON report, verdicts, markdown, plots; markdown also to $GITHUB_STEP_SUMMARY."""
    from pytest_qdm.report import (
        append_github_step_summary,
        markdown_summary,
        plot_report,
        write_json,
    )

    out = Path(options.report_dir)
    rows = [(v.name, v.passed, v.message) for v in verdicts]
    written = [write_json(report, out / "qdm-report.json")]
    (out / "verdicts.json").write_text(json.dumps(rows, indent=1))
    markdown = markdown_summary(report, rows)
    (out / "qdm-summary.md").write_text(markdown)
    written += [out / "verdicts.json", out / "qdm-summary.md"]
    if options.plots:
        written += plot_report(report, out)
    append_github_step_summary(markdown, os.environ)
    return written
