"""``check_claims``: measure every claim on the reference and on every condition (the
same prompts, token ids and SAE on both sides) and judge it."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_qdm.claims.base import Claim, ClaimContext
from pytest_qdm.schema.claims import ClaimsReport


def check_static(claims: Sequence[Claim], d_sae: int | None = None) -> None:
    """Refuse (ValueError, one line) duplicate ids, empty text sets and, given the SAE's
    width, feature ids outside it."""
    seen: set[str] = set()
    for claim in claims:
        if claim.id in seen:
            raise ValueError(f"duplicate claim id {claim.id!r}; give every claim its own id")
        seen.add(claim.id)
        for field, texts in claim.text_sets().items():
            if not texts or not any(t.strip() for t in texts):
                raise ValueError(f"claim {claim.id!r}: {field} is empty; give at least one text")
        outside = [k for k in claim.feature_ids() if d_sae is not None and not 0 <= k < d_sae]
        if outside:
            raise ValueError(
                f"claim {claim.id!r}: feature {outside[0]} is outside the SAE (0..{d_sae - 1})"
            )


def check_targets(claims: Sequence[Claim], tokenize) -> None:
    """Refuse a target string that tokenizes to no token (``tokenize(text) -> ids``)."""
    for claim in claims:
        for target in claim.target_strings():
            if not tokenize(target):
                raise ValueError(
                    f"claim {claim.id!r}: target {target!r} tokenizes to no token; "
                    "give a non-empty target string"
                )


def check_claims(
    model,
    sae,
    claims: Sequence[Claim],
    conditions: Sequence = (),
    *,
    tokens=None,
    hook: str | None = None,
    prepend_bos: bool | None = None,
    correlations: dict | None = None,
    progress=None,
) -> ClaimsReport:
    """Every claim on every condition (``compress.conditions`` objects: RTN, schemes,
    candidates, ``Reference()``). ``tokens`` [n, ctx]: the audit tokens, for detects'
    top-context overlap and the r of ``survives`` claims (audited here unless
    ``correlations`` maps condition names to r). The model is left as it was."""
    from pytest_qdm.load.tokens import prepend_bos_from_sae
    from pytest_qdm.settings import AuditConfig
    from pytest_qdm.stream.hooks import resolve_hook

    claims = list(claims)
    check_static(claims, int(sae.cfg.d_sae))
    ctx = ClaimContext(
        sae=sae,
        hook=resolve_hook(model, sae, AuditConfig(hook_name=hook)),
        reference=model,
        prepend_bos=prepend_bos_from_sae(sae, default=True) if prepend_bos is None else prepend_bos,
        audit_tokens=None if tokens is None else getattr(tokens, "tokens", tokens),
    )
    check_targets(claims, ctx.target_ids)
    ctx.correlations = dict(correlations or {})
    if any(c.kind == "survives" for c in claims) and tokens is not None and not correlations:
        ctx.correlations = _audited_r(model, sae, ctx, conditions)
    reference = {c.id: c.measure(ctx, model) for c in claims}
    results = []
    for condition in conditions:
        with condition.running(model, condition.compressed_weights(model)) as compressed:
            measured = {c.id: c.measure(ctx, compressed) for c in claims}
        for claim in claims:
            results.append(
                claim.judge(ctx, reference[claim.id], measured[claim.id], condition.name)
            )
        if progress is not None:
            progress()
    return ClaimsReport(
        claims=[{"kind": c.kind, **c.model_dump()} for c in claims], results=results
    )


def _audited_r(model, sae, ctx: ClaimContext, conditions) -> dict:
    """Pearson r per feature and condition from the project's audit of the same tokens."""
    from pytest_qdm.run.audit import audit
    from pytest_qdm.settings import AuditConfig

    result = audit(model, sae, ctx.audit_tokens, list(conditions), AuditConfig(hook_name=ctx.hook))
    return {name: c.correlation for name, c in result.conditions.items()}
