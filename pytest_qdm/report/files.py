"""Report files: the JSON result (:func:`pytest_qdm.jsonfile.write_json`) and a GitHub-flavoured
markdown summary."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_qdm.report import _breakdowns as breakdown
from pytest_qdm.report import _format as fmt
from pytest_qdm.report.behaviour import BEHAVIOUR_LEGEND, behaviour_table
from pytest_qdm.report.claims import LEGEND as CLAIMS_LEGEND
from pytest_qdm.report.claims import claims_table
from pytest_qdm.report.retrain import (
    lost_caption,
    lost_moved_table,
    retrain_caption,
    three_way_table,
)
from pytest_qdm.schema.protocol import MASKS_DAMAGE

if TYPE_CHECKING:
    from pytest_qdm.schema.protocol import ProtocolReport


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines)


def markdown_summary(report: ProtocolReport, verdicts: Sequence[tuple[str, bool, str]] = ()) -> str:
    """The report as GitHub-flavoured markdown: sweep table, findings, one-liners, verdicts."""
    first, second, *candidates = fmt.headline(report)
    out = [f"## QDM audit: `{report.audit.hook_name}`", "", f"{first}; {second}.", ""]
    out += [*(f"- {line}" for line in candidates), ""] if candidates else []
    out += [_table(fmt.WIDE_HEADERS, [fmt.sweep_cells(r) for r in report.sweep], 2), ""]
    for table, legend in [
        (breakdown.domain_table(report), breakdown.domain_caption(report)),
        (fmt.lens_table(report), fmt.LENS_LEGEND),
        (behaviour_table(report), BEHAVIOUR_LEGEND),
        (fmt.sae_pruning_table(report), None),
        (breakdown.sensitivity_table(report), breakdown.sensitivity_plan_line(report)),
        (claims_table(report.claims), CLAIMS_LEGEND),
        (three_way_table(report), retrain_caption(report)),
        (lost_moved_table(report), lost_caption(report)),
    ]:
        if table is not None:
            title, headers, rows = table
            out += [f"### {title}", "", _table(headers, rows, 1), ""]
            out += [legend, ""] if legend else []
    out += ["### Findings", ""]
    for finding in report.findings:
        bold = finding.kind == MASKS_DAMAGE
        out.append(f"> **{finding.message}**" if bold else f"- {finding.message}")
        out.append("")
    if not report.findings:
        out += ["No condition held perplexity while its SAE features degraded.", ""]
    details = [
        ("Matched pruning", fmt.pruning_line(report)),
        ("Overlap", fmt.overlap_line(report)),
        (f"Predictor (survival under {report.predictor_condition})", fmt.predictor_line(report)),
        ("Predictor caveat", fmt.predictor_caveat(report)),
        *((label[:1].upper() + label[1:], text) for label, text in fmt.stability_lines(report)),
    ]
    out += [f"- **{label}:** {text}" for label, text in details if text is not None]
    if verdicts:
        rows = [
            [name, f"{'✅' if passed else '❌'} {fmt.verdict_word(passed)}", message]
            for name, passed, message in verdicts
        ]
        out += ["", "### Gate verdicts", "", _table(("gate", "result", "detail"), rows, 3)]
    return "\n".join(out) + "\n"


def append_github_step_summary(
    markdown: str, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """Append ``markdown`` to the file named by ``$GITHUB_STEP_SUMMARY``; None when unset."""
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as file:
        file.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return path
