"""The Claims section of every report (terminal, markdown, HTML) and the claims' JUnit
properties: one row per claim and condition, both models' numbers side by side."""

from __future__ import annotations

from html import escape

from pytest_qdm.report._format import num
from pytest_qdm.schema.claims import ClaimResult, ClaimsReport

HEADERS = (
    "claim",
    "kind",
    "condition",
    "reference",
    "compressed",
    "ratio",
    "gated [95% CI]",
    "bound",
    "result",
)
LEGEND = (
    "reference / compressed: the claim's effect on each model (steers, ablates: nats; "
    "detects: AUROC; probe: held-out accuracy or AUROC; survives: min r); the bound is "
    "checked on the estimate or the interval end named in the detail (docs/claims.md)"
)


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3g}, {ci[1]:.3g}]"


def _gated_value(result: ClaimResult) -> float | None:
    if result.gated == "ratio":
        return result.ratio
    if result.gated == "auroc_drop":
        return result.detail.get("auroc_drop")
    return result.effect


def claim_cells(result: ClaimResult) -> list[str]:
    return [
        result.claim,
        result.kind,
        result.condition,
        num(result.reference_effect, ".4g") + _interval(result.reference_ci),
        num(result.effect, ".4g"),
        num(result.ratio, ".3f"),
        f"{result.gated} {num(_gated_value(result), '.4g')}{_interval(result.ci)}",
        result.bound,
        result.status,
    ]


def claims_table(claims: ClaimsReport | None):
    """(title, headers, rows) of the Claims section, or None without claims."""
    if claims is None or not claims.results:
        return None
    return "Claims", HEADERS, [claim_cells(r) for r in claims.results]


def claims_html(claims: ClaimsReport | None, table) -> str:
    """The HTML Claims section: the table, then each claim with its texts (``table``:
    the page's own table renderer)."""
    found = claims_table(claims)
    if found is None:
        return ""
    _, headers, rows = found
    classes = [[None] * 8 + ["pass" if r.holds else "fail"] for r in claims.results]
    parts = [
        "<h2>Claims</h2>",
        table(headers, rows, classes),
        f'<p class="muted">{escape(LEGEND)}</p>',
    ]
    for claim in claims.claims:
        texts = {k: v for k, v in claim.items() if isinstance(v, (list, dict)) and k != "features"}
        shown = "".join(
            f"<li><b>{escape(field)}</b>: {escape(_preview(value))}</li>"
            for field, value in texts.items()
        )
        settings = ", ".join(
            f"{k}={v}" for k, v in claim.items() if k not in texts and k not in ("id", "kind")
        )
        parts.append(
            f"<details><summary>{escape(claim['id'])} ({escape(claim['kind'])}): "
            f"{escape(settings)}</summary><ul>{shown}</ul></details>"
        )
    return "".join(parts)


def _preview(value, n: int = 5) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_preview(v, 2)}" for k, v in value.items())
    head = " | ".join(str(v) for v in value[:n])
    return head + (f" | ... ({len(value)} in all)" if len(value) > n else "")


def claim_properties(result: ClaimResult) -> list[tuple[str, object]]:
    """JUnit properties ``qdm.<condition>.claim.<id>.<field>``."""
    prefix = f"qdm.{result.condition}.claim.{result.claim}"
    values = {
        "reference_effect": result.reference_effect,
        "effect": result.effect,
        "ratio": result.ratio,
        "ci_low": result.ci and result.ci[0],
        "ci_high": result.ci and result.ci[1],
        "gated": result.gated,
        "status": result.status,
        "holds": result.holds,
        **{k: v for k, v in result.detail.items() if v is not None},
    }
    return [(f"{prefix}.{k}", v) for k, v in values.items() if v is not None]
