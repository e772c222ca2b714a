"""The protocol's report rows: one :class:`SweepRow` per condition (with its per-domain
rows) from the phases' results, and the findings stated over those rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.analyse.behaviour import (
    behaviour_fields,
    behaviour_findings,
)
from pytest_qdm.analyse.floor import floor_findings
from pytest_qdm.analyse.perplexity import (
    relative_change,
)
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.protocol import MASKS_DAMAGE, DomainRow, Finding, SweepRow
from pytest_qdm.settings import ProtocolConfig

if TYPE_CHECKING:
    from pytest_qdm.run.perplexity_phase import Perplexities


def sweep_rows(
    conditions: list[Condition], result: AuditResult, measured: Perplexities, bootstrap
) -> list[SweepRow]:
    """One row per condition: its survival bands, perplexities, interval and behaviour."""
    return [
        _row(
            c.name,
            result.conditions[c.name],
            measured.perplexity.get(c.name, {}),
            measured.reference,
            bootstrap.get(c.name),
            measured.transfer.get(c.name),
            measured.behaviour.get(c.name),
        )
        for c in conditions
    ]


def findings_phase(report_rows: list[SweepRow], cfg: ProtocolConfig) -> list[Finding]:
    """The study's central result, stated per condition: perplexity held, features did not."""
    findings = []
    for row in report_rows:
        change, survived = row.ppl_chunked_change, row.survived_pct
        if change is None or survived is None or row.kind in ("Reference", "NoiseFloor"):
            continue
        if change <= cfg.masks_ppl_tolerance and survived < 100 * cfg.masks_survival_bound:
            verb = "improved" if change < 0 else "rose only"
            findings.append(
                Finding(
                    kind=MASKS_DAMAGE,
                    condition=row.condition,
                    message=(
                        f"{row.condition}: perplexity {verb} {change:+.2%} while only "
                        f"{survived:.1f}% of active SAE features survived "
                        f"({row.degraded_pct:.1f}% degraded, {row.damaged_pct:.1f}% damaged): "
                        "perplexity masks feature damage."
                    ),
                )
            )
    return findings + behaviour_findings(report_rows, cfg) + floor_findings(report_rows)


def _row(name, cond, ppl, ref_ppl, ci, quality, behaviour=None) -> SweepRow:
    s, agreement = cond.summary, cond.agreement
    chunked, sliding = (ppl.get(k) for k in ("chunked", "sliding"))

    def change(result, key):
        return relative_change(result.perplexity, ref_ppl[key].perplexity) if result else None

    return SweepRow(
        condition=name,
        kind=cond.spec.kind,
        bits=cond.spec.bits,
        sparsity=cond.spec.sparsity,
        ppl_chunked=chunked.perplexity if chunked else None,
        ppl_chunked_change=change(chunked, "chunked"),
        ppl_sliding=sliding.perplexity if sliding else None,
        ppl_sliding_change=change(sliding, "sliding"),
        mean_correlation=s.mean_correlation,
        median_correlation=s.median_correlation,
        survived_pct=s.survived_pct,
        degraded_pct=s.degraded_pct,
        damaged_pct=s.damaged_pct,
        silenced_count=s.silenced_count,
        emergent_count=s.emergent_count,
        sae_explained_variance=quality.explained_variance if quality else None,
        sae_loss_recovered=quality.loss_recovered if quality else None,
        sample_correlation=agreement.sample_correlation if agreement else None,
        topk_agreement=agreement.topk_agreement if agreement else None,
        procrustes_error=agreement.procrustes_aligned_error if agreement else None,
        unaligned_error=agreement.unaligned_error if agreement else None,
        survived_ci=(ci.low, ci.high) if ci else None,
        **behaviour_fields(behaviour),
        domains={
            domain: _domain_row(summary, chunked, ref_ppl.get("chunked"), domain)
            for domain, summary in cond.domains.items()
        },
    )


def _domain_row(summary, chunked, ref_chunked, domain: str) -> DomainRow:
    ppl = chunked.by_domain.get(domain) if chunked else None
    ref = ref_chunked.by_domain.get(domain) if ref_chunked else None
    change = None
    if ppl and ref and ppl.perplexity and ref.perplexity:
        change = relative_change(ppl.perplexity, ref.perplexity)
    bands = summary.model_dump(include=set(DomainRow.model_fields))
    return DomainRow(
        **bands, ppl_chunked=ppl.perplexity if ppl else None, ppl_chunked_change=change
    )
