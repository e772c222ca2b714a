"""The gate's files: JSON report, verdicts, markdown (also to $GITHUB_STEP_SUMMARY), plots,
and the self-contained HTML page (index.html)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pytest_qdm.options import QdmOptions
from pytest_qdm.schema.gate import Verdict
from pytest_qdm.schema.protocol import ProtocolReport


def write_outputs(
    report: ProtocolReport,
    verdicts: list[Verdict],
    options: QdmOptions,
    provenance: dict | None = None,
) -> list[Path]:
    """JSON report, verdicts, markdown, plots, index.html; markdown also to
    $GITHUB_STEP_SUMMARY.
    ``provenance`` (where the result came from: computed or cached, fingerprint) goes to
    run.json."""
    from pytest_qdm.report import (
        append_github_step_summary,
        markdown_summary,
        plot_report,
        write_html,
        write_json,
    )

    out = Path(options.report_dir)
    rows = [(v.name, v.passed, v.message) for v in verdicts]
    written = [write_json(report, out / "qdm-report.json")]
    (out / "verdicts.json").write_text(json.dumps(rows, indent=1))
    markdown = markdown_summary(report, rows)
    (out / "qdm-summary.md").write_text(markdown)
    (out / "run.json").write_text(json.dumps(provenance or {}, indent=1))
    written += [out / "verdicts.json", out / "qdm-summary.md", out / "run.json"]
    plots = plot_report(report, out) if options.plots else []
    written += [*plots, write_html(report, out / "index.html", rows, plots)]
    append_github_step_summary(markdown, os.environ)
    return written


def summary_notes(options: QdmOptions, out: Path) -> list[str]:
    """Lines under the terminal report: a cache hit, and a run that gated nothing."""
    lines = []
    run = out / "run.json"
    provenance = json.loads(run.read_text()) if run.exists() else {}
    if provenance.get("cached"):
        lines.append(
            f"cached result from {provenance.get('cached_at', '?')} (fingerprint "
            f"{provenance.get('fingerprint')}); --qdm-no-cache recomputes"
        )
    if not options.gates and not options.baseline:
        from pytest_qdm.report._format import NOTHING_GATED

        lines.append(NOTHING_GATED)
    return lines


def summary_text(options: QdmOptions, since: float, width: int, markup: bool) -> str | None:
    """The end-of-session report from the files this run wrote (also on the xdist
    controller, which never ran the gate itself); None when this run wrote none."""
    import io

    from rich.console import Console

    from pytest_qdm.report import render_report

    out = Path(options.report_dir)
    path = out / "qdm-report.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    report = ProtocolReport.from_json(path.read_text())
    verdicts_path = out / "verdicts.json"
    verdicts = (
        [tuple(v) for v in json.loads(verdicts_path.read_text())] if verdicts_path.exists() else []
    )
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=markup,
        color_system="auto" if markup else None,
    )
    render_report(report, console, verdicts=verdicts)
    index = (out / "index.html").resolve()
    lines = [*summary_notes(options, out), f"report: {index} (JSON, Markdown, plots beside it)"]
    return buffer.getvalue() + "".join(line + "\n" for line in lines)
