"""The gate's files: JSON report, verdicts, markdown (also to $GITHUB_STEP_SUMMARY), plots,
and the self-contained HTML page (index.html)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pytest_qdm.options import QdmOptions
from pytest_qdm.report.files import append_github_step_summary, markdown_summary
from pytest_qdm.schema.gate import Verdict
from pytest_qdm.schema.protocol import ProtocolReport

LOCK_NAME = ".qdm-report.lock"


def write_outputs(
    report: ProtocolReport,
    verdicts: list[Verdict],
    options: QdmOptions,
    provenance: dict | None = None,
) -> list[Path]:
    """JSON report, verdicts, markdown, plots, index.html; markdown also to
    $GITHUB_STEP_SUMMARY.
    ``provenance`` (where the result came from: computed or cached, fingerprint) goes to
    run.json.

    The files are written into a staging folder, then moved into the report folder one
    ``os.replace`` each, under a lock on the folder: runs sharing a report folder take
    turns, and the folder holds one run's complete set of files, never a mix."""
    from filelock import FileLock

    out = Path(options.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / LOCK_NAME)):
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
        try:
            written = _write_files(report, verdicts, options, provenance, staging)
            for path in written:
                os.replace(path, out / path.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    rows = [(v.name, v.passed, v.message) for v in verdicts]
    append_github_step_summary(markdown_summary(report, rows), os.environ)
    return [out / path.name for path in written]


def _write_files(report, verdicts, options, provenance, out: Path) -> list[Path]:
    from pytest_qdm.report import markdown_summary, plot_report, write_html, write_json

    rows = [(v.name, v.passed, v.message) for v in verdicts]
    written = [write_json(report, out / "qdm-report.json")]
    (out / "verdicts.json").write_text(json.dumps(rows, indent=1))
    (out / "qdm-summary.md").write_text(markdown_summary(report, rows))
    (out / "run.json").write_text(json.dumps(provenance or {}, indent=1))
    written += [out / "verdicts.json", out / "qdm-summary.md", out / "run.json"]
    plots = plot_report(report, out) if options.plots else []
    return [*written, *plots, write_html(report, out / "index.html", rows, plots)]


def summary_notes(options: QdmOptions, provenance: dict) -> list[str]:
    """Lines under the terminal report: a cache hit, and a run that gated nothing."""
    lines = []
    if provenance.get("cached"):
        lines.append(
            f"cached result from {provenance.get('cached_at', '?')} (fingerprint "
            f"{provenance.get('fingerprint')}); --qdm-no-cache recomputes"
        )
    if not options.gates and not options.baseline:
        from pytest_qdm.report._format import NOTHING_GATED

        lines.append(NOTHING_GATED)
    return lines


def summary_text(options: QdmOptions, outcome: dict, width: int, markup: bool) -> str:
    """The end-of-session report of this run's own result (``outcome``: see
    :meth:`GateSession.outcome`), never of files another run may have written since."""
    import io

    from rich.console import Console

    from pytest_qdm.report import render_report

    report = outcome["report"]
    if isinstance(report, str):  # from an xdist worker
        report = ProtocolReport.from_json(report)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=markup,
        color_system="auto" if markup else None,
    )
    render_report(report, console, verdicts=[tuple(v) for v in outcome["verdicts"]])
    index = (Path(options.report_dir) / "index.html").resolve()
    lines = [
        *summary_notes(options, outcome["provenance"]),
        f"report: {index} (JSON, Markdown, plots beside it)",
    ]
    return buffer.getvalue() + "".join(line + "\n" for line in lines)
