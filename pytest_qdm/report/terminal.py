"""Rich terminal rendering of a protocol report or a bare audit.

All text from the results goes in as :class:`rich.text.Text`, never as markup, so names
with brackets print as they are. Styles only: with ``color_system=None`` (or output that
is not a terminal) the console writes plain text without ANSI escapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pytest_qdm.report import _breakdowns as breakdown
from pytest_qdm.report import _drilldown as drill
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
    from pytest_qdm.schema.audit import AuditResult
    from pytest_qdm.schema.protocol import ProtocolReport

Verdict = tuple[str, bool, str]
WIDE_MIN_WIDTH = 116  # narrower consoles get the compact sweep table


def _table(title: str, headers: Sequence[str], first_left: int = 1, **kwargs) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 0),  # the box's blank divider is the one space between columns
        **kwargs,
    )
    for i, header in enumerate(headers):
        left = i < first_left
        # condition names stay whole; the other columns wrap
        table.add_column(
            header, justify="left" if left else "right", overflow="fold", no_wrap=i == 0
        )
    return table


def _sweep_table(report: ProtocolReport, compact: bool) -> Table:
    if compact:  # abbreviated headers and a legend
        table = _table("Sweep", fmt.COMPACT_HEADERS, caption=fmt.COMPACT_LEGEND)
        table.caption_justify = "left"
    else:
        table = _table("Sweep", fmt.WIDE_HEADERS, first_left=2)
    masked = {f.condition for f in report.findings if f.kind == MASKS_DAMAGE}
    for row in report.sweep:
        cells = [Text(c) for c in fmt.sweep_cells(row, compact)]
        if row.condition in masked:
            cells[0].stylize("bold red")
        table.add_row(*cells)
    _keep_cells_whole(table)
    return table


def _keep_cells_whole(table: Table) -> None:
    """Numbers and intervals are never split across lines ("100.0–100." / "0"): each number
    column is at least as wide as its widest cell, and a long condition name folds instead;
    headers still wrap."""
    name, *numbers = table.columns
    name.no_wrap, name.min_width = False, len("reference")
    for column in numbers:
        widths = [len(c.plain if isinstance(c, Text) else str(c)) for c in column.cells]
        column.min_width = max(widths, default=None)


def _titled_table(table: fmt.TitledTable | None, caption: str | None = None) -> Table | None:
    """A (title, headers, rows) table from ``_format``; None stays None."""
    if table is None:
        return None
    title, headers, rows = table
    out = _table(title, headers, caption=caption)
    out.caption_justify = "left"
    for cells in rows:
        out.add_row(*(Text(c) for c in cells))
    return out


def _key_values(title: str, pairs: Sequence[tuple[str, str | Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.title, grid.title_justify, grid.title_style = title, "left", "bold"
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(Text(key), value if isinstance(value, Text) else Text(value))
    return grid


def _pruning(report: ProtocolReport) -> Table | None:
    pairs = [
        (label, text)
        for label, text in (
            ("matched pruning", fmt.pruning_line(report)),
            ("overlap", fmt.overlap_line(report)),
        )
        if text is not None
    ]
    return _key_values("Pruning at matched perplexity", pairs) if pairs else None


def _predictor(report: ProtocolReport) -> Table:
    caveat = Text(fmt.predictor_caveat(report), style="yellow")
    title = f"Fragility predictor (survival under {report.predictor_condition})"
    return _key_values(title, [("status", fmt.predictor_line(report)), ("caveat", caveat)])


def _stability(report: ProtocolReport) -> Table:
    null = report.stability.null
    style = "green" if null is not None and null.passed else "bold red"
    pairs = [
        (label, Text(text, style=style) if label == fmt.NULL_LABEL else text)
        for label, text in fmt.stability_lines(report)
    ]
    return _key_values("Stability", pairs)


def _findings(report: ProtocolReport) -> Panel | Text:
    if not report.findings:
        return Text("No condition held perplexity while its SAE features degraded.")
    body = Text()
    for i, finding in enumerate(report.findings):
        if i:
            body.append("\n")
        style = "bold red" if finding.kind == MASKS_DAMAGE else ""
        body.append(finding.message, style=style)
    masked = any(f.kind == MASKS_DAMAGE for f in report.findings)
    title = "Findings: perplexity masks feature damage" if masked else "Findings"
    return Panel(body, title=title, title_align="left", border_style="red")


def _drilldown(report: ProtocolReport, width: int) -> Text | None:
    """The most damaged features of one condition, each with the reference's top context."""
    lines = drill.drilldown_lines(report, width)
    if not lines:
        return None
    out = Text(f"Most damaged features under {drill.drilldown_condition(report)}", style="bold")
    out.append("\n(reference's top context, peak token in [brackets])", style="dim")
    for line in lines:
        out.append("\n" + line)
    return out


def _verdicts(verdicts: Sequence[Verdict]) -> Table:
    table = _table("Gate verdicts", ("gate", "result", "detail"), first_left=3)
    for name, passed, message in verdicts:
        word = Text(fmt.verdict_word(passed), style="bold green" if passed else "bold red")
        table.add_row(Text(name), word, Text(message))
    return table


def render_report(
    report: ProtocolReport, console: Console, *, verdicts: Sequence[Verdict] = ()
) -> None:
    """Print the protocol report: sweep, lenses, pruning, predictor, stability, findings,
    most damaged features, verdicts."""
    console.rule(Text("QDM audit", style="bold"))
    for line in fmt.headline(report):
        console.print(Text(line))
    console.print()
    sections = [
        _sweep_table(report, console.width < WIDE_MIN_WIDTH),
        _titled_table(breakdown.domain_table(report), caption=breakdown.domain_caption(report)),
        _titled_table(fmt.lens_table(report), caption=fmt.LENS_LEGEND),
        _titled_table(behaviour_table(report), caption=BEHAVIOUR_LEGEND),
        _titled_table(fmt.sae_pruning_table(report)),
        _titled_table(
            breakdown.sensitivity_table(report), caption=breakdown.sensitivity_plan_line(report)
        ),
        _titled_table(claims_table(report.claims), caption=CLAIMS_LEGEND),
        _titled_table(three_way_table(report), caption=retrain_caption(report)),
        _titled_table(lost_moved_table(report), caption=lost_caption(report)),
        _pruning(report),
        _predictor(report),
        _stability(report),
        _findings(report),
        _drilldown(report, console.width),
        _verdicts(verdicts) if verdicts else None,
    ]
    for section in sections:
        if section is not None:
            console.print(section)
            console.print()


def render_audit(result: AuditResult, console: Console) -> None:
    """Print the bands of every condition of a bare audit."""
    headers = ("condition", "active", "survived %", "degraded %", "damaged %", "silenced")
    title = f"QDM audit: {result.hook_name}, {result.tokens.n_tokens:,} tokens"
    table = _table(title, (*headers, "emergent", "mean r", "median r"))
    for name, cond in result.conditions.items():
        s = cond.summary
        cells = [
            name,
            f"{s.n_active:,}",
            *(fmt.num(v, ".1f") for v in (s.survived_pct, s.degraded_pct, s.damaged_pct)),
            str(s.silenced_count),
            str(s.emergent_count),
            fmt.num(s.mean_correlation, ".4f"),
            fmt.num(s.median_correlation, ".4f"),
        ]
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
