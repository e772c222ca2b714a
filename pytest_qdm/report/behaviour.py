"""The behaviour table (next-token agreement with the reference) shared by the terminal,
markdown and HTML reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.report._format import num

if TYPE_CHECKING:
    from pytest_qdm.report._format import TitledTable
    from pytest_qdm.schema.protocol import ProtocolReport, SweepRow

BEHAVIOUR_HEADERS = (
    "condition",
    "KL\nnats",
    "KL 95%\nCI",
    "rev. KL\nnats",
    "top-1\nagree",
    "top-k\noverlap",
    "Δp\ntop",
)
BEHAVIOUR_LEGEND = (
    "KL: mean KL(reference || condition) of the next-token distributions per token; rev. KL: "
    "KL(condition || reference); top-1 agree: share of tokens whose most likely next token "
    "is the reference's (1 - flip rate); top-k overlap: shared top-10 next tokens; Δp top: "
    "change of the probability of the reference's top token. Same forwards as perplexity, "
    "float64."
)


def behaviour_table(report: ProtocolReport) -> TitledTable | None:
    """One row per measured condition; None when no row has behaviour (an older report)."""
    rows = [row for row in report.sweep if row.kl is not None]
    if not rows:
        return None
    return "Behaviour vs the reference", BEHAVIOUR_HEADERS, [_cells(row) for row in rows]


def _cells(row: SweepRow) -> list[str]:
    low, high = row.kl_ci or (None, None)
    ci = None if low is None else f"{low:.2g}–{high:.2g}"
    return [
        row.condition,
        num(row.kl, ".3g"),
        ci or "—",
        num(row.kl_reverse, ".3g"),
        num(row.top1_agreement, ".2%"),
        num(row.topk_token_overlap, ".3f"),
        num(row.top_prob_change, "+.4f"),
    ]
