"""Tables that break a result down: survival and perplexity change per labelled domain, and
per block with the verified mixed-precision plan (values in, text out)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.report._format import TitledTable, change, num

if TYPE_CHECKING:
    from pytest_qdm.schema.protocol import ProtocolReport


def domains(report: ProtocolReport) -> list[str]:
    """The labelled domains of the audit tokens, in row order (none: one unlabelled source)."""
    return list(report.audit.tokens.domains)


def domain_table(report: ProtocolReport) -> TitledTable | None:
    """Survival and perplexity change per labelled domain and condition; None without
    domains."""
    names = domains(report)
    if not names:
        return None
    headers = ("condition", *(f"{d}\n{m}" for d in names for m in ("surv %", "mean r", "ΔPPL")))
    rows = []
    for row in report.sweep:
        if row.kind == "Reference":
            continue
        cells = [row.condition]
        for d in names:
            cell = row.domains.get(d)
            cells += [
                num(cell and cell.survived_pct, ".1f"),
                num(cell and cell.mean_correlation, ".4f"),
                change(cell and cell.ppl_chunked_change),
            ]
        rows.append(cells)
    return "Survival per domain", headers, rows


def domain_caption(report: ProtocolReport) -> str | None:
    """Tokens and active features per domain; bands count the domain's own active features."""
    names = domains(report)
    if not names:
        return None
    reference = next(r for r in report.sweep if r.kind == "Reference")
    parts = [
        f"{d}: {report.audit.tokens.domains[d]:,} tokens, {reference.domains[d].n_active:,} active"
        for d in names
        if d in reference.domains
    ]
    return (
        "; ".join(parts) + ". Each domain's bands count the features active on its own "
        "tokens; ΔPPL is chunked perplexity on its rows. Gate one with COND@DOMAIN:BOUND."
    )


SENSITIVITY_HEADERS = ("condition", "survived %", "mean r", "ΔPPL chunk")


def sensitivity_table(report: ProtocolReport) -> TitledTable | None:
    """Block sensitivity: survival and perplexity change with one block at the focus width;
    None when it was not run."""
    s = getattr(report, "sensitivity", None)
    if s is None:
        return None
    rows = [
        [
            b.condition + (" (above read-out)" if b.above_readout else ""),
            num(b.survived_pct, ".1f"),
            num(b.mean_correlation, ".4f"),
            change(b.ppl_chunked_change),
        ]
        for b in s.blocks
    ]
    return f"Block sensitivity: one block at INT{s.focus_bits}", SENSITIVITY_HEADERS, rows


def _listed(blocks: list[int]) -> str:
    words = [str(b) for b in blocks]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return ("block " if len(words) == 1 else "blocks ") + text


def sensitivity_plan_line(report: ProtocolReport) -> str | None:
    """The verified mixed-precision plan in words, measured numbers; None when not run."""
    s = getattr(report, "sensitivity", None)
    if s is None:
        return None
    p, focus = s.plan, f"INT{s.plan.focus_bits}"
    if p.raised_blocks:
        what = f"{_listed(p.raised_blocks)} at INT{p.raised_bits}, the rest {focus}"
    else:
        what = f"every block at {focus}"
    met = "met" if p.target_met else "NOT reached"
    return (
        f"Plan: {what}: survived {num(p.survived_pct, '.1f')}%, PPL {change(p.ppl_chunked_change)} "
        f"(all {focus}: {num(p.focus_survived_pct, '.1f')}%, "
        f"{change(p.focus_ppl_chunked_change)}); target {p.target_survived_pct:g}% {met}"
    )
