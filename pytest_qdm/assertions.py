"""Assertions for test suites: survival gates and regression tests on named features.

Each takes either a finished ``result`` (an AuditResult, e.g. the ``qdm_audit`` fixture) or
a model and SAE to audit on the spot, and raises AssertionError with a readable report.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pytest_qdm.compress.conditions import RTN
from pytest_qdm.gate.thresholds import as_fraction
from pytest_qdm.schema.audit import AuditResult, ConditionResult
from pytest_qdm.settings import SURVIVAL_THRESHOLD, AuditConfig

DEFAULT_TOKENS = 20_000


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def condition_report(condition: ConditionResult, worst: int = 5) -> str:
    """A few lines: bands, mean r and the worst features by id."""
    s = condition.summary
    worst_ids = ", ".join(f"#{i} (r={r:.3f})" for i, r in condition.worst_features(worst))
    return (
        f"{condition.name}: survived {_fmt(s.survived_pct)}, degraded {_fmt(s.degraded_pct)}, "
        f"damaged {_fmt(s.damaged_pct)} of {s.n_active} active features "
        f"(silenced {s.silenced_count}, emergent {s.emergent_count})\n"
        f"  worst features: {worst_ids or 'none'}"
    )


def default_tokens(model, n_tokens: int = DEFAULT_TOKENS):
    """Tokens of the built-in corpus, tokenized with the model's own tokenizer."""
    from pytest_qdm.load.tokens import load_tokens

    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the model has no tokenizer attached; pass tokens=LongTensor [n, ctx]")
    context = min(model.cfg.n_ctx, 128)
    return load_tokens(
        "builtin",
        model.tokenizer,
        context_length=context,
        max_tokens=n_tokens,
        prepend_bos=True,
    )


def condition_at(
    bits: int,
    *,
    result: AuditResult | None,
    model,
    sae,
    tokens,
    config: AuditConfig | None,
    group_size: int | None = None,
) -> ConditionResult:
    """The RTN condition at ``bits``: looked up in ``result``, or audited now."""
    condition = RTN(bits, group_size)
    if result is None:
        if model is None or sae is None:
            raise ValueError("pass result=AuditResult or both model and sae")
        from pytest_qdm.run.audit import audit

        tokens = default_tokens(model) if tokens is None else tokens
        result = audit(model, sae, tokens, [condition], config)
    if condition.name not in result.conditions:
        raise ValueError(
            f"the audit has no condition {condition.name!r}; it has {sorted(result.conditions)}"
        )
    return result.conditions[condition.name]


def assert_feature_survival(
    model=None,
    sae=None,
    bits: int = 6,
    min_survived: float | str = 0.6,
    *,
    tokens=None,
    config: AuditConfig | None = None,
    result: AuditResult | None = None,
) -> ConditionResult:
    """Fail unless at least ``min_survived`` (0.6 or "60%") of active features survive."""
    __tracebackhide__ = True
    min_survived = as_fraction("min_survived", min_survived)
    cond = condition_at(bits, result=result, model=model, sae=sae, tokens=tokens, config=config)
    survived = cond.summary.survived_pct
    if survived is None or survived < 100 * min_survived:
        raise AssertionError(
            f"feature survival below the gate at INT{bits}: {_fmt(survived)} < "
            f"{100 * min_survived:.1f}% required\n{condition_report(cond)}"
        )
    return cond


def assert_max_damaged(
    model=None,
    sae=None,
    bits: int = 4,
    max_damaged: float | str = 0.4,
    *,
    tokens=None,
    config: AuditConfig | None = None,
    result: AuditResult | None = None,
) -> ConditionResult:
    """Fail if more than ``max_damaged`` (0.4 or "40%") of active features are damaged."""
    __tracebackhide__ = True
    max_damaged = as_fraction("max_damaged", max_damaged)
    cond = condition_at(bits, result=result, model=model, sae=sae, tokens=tokens, config=config)
    damaged = cond.summary.damaged_pct
    if damaged is None or damaged > 100 * max_damaged:
        raise AssertionError(
            f"too many damaged features at INT{bits}: {_fmt(damaged)} > "
            f"{100 * max_damaged:.1f}% allowed\n{condition_report(cond)}"
        )
    return cond


def assert_features_survive(
    feature_ids: Iterable[int],
    bits: int = 6,
    min_correlation: float = SURVIVAL_THRESHOLD,
    *,
    model=None,
    sae=None,
    tokens=None,
    config: AuditConfig | None = None,
    result: AuditResult | None = None,
) -> ConditionResult:
    """Fail unless every listed feature keeps r >= ``min_correlation`` at ``bits``.

    For claims such as "the features our refusal probe uses survive INT6". A feature that
    is not active in the reference cannot be checked and fails with that reason.
    """
    __tracebackhide__ = True
    ids = [int(i) for i in feature_ids]
    if not ids:
        raise ValueError("feature_ids is empty; name the features whose survival you claim")
    cond = condition_at(bits, result=result, model=model, sae=sae, tokens=tokens, config=config)
    d_sae = cond.correlation.size
    out_of_range = [i for i in ids if not 0 <= i < d_sae]
    if out_of_range:
        raise ValueError(f"feature ids {out_of_range} are outside the SAE's 0..{d_sae - 1}")
    r = cond.correlation[ids]
    failures = [
        f"#{i}: " + ("not active in the reference" if np.isnan(v) else f"r={v:.4f}")
        for i, v in zip(ids, r, strict=True)
        if np.isnan(v) or v < min_correlation
    ]
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(ids)} claimed features fall below r={min_correlation} "
            f"at INT{bits}: " + "; ".join(failures)
        )
    return cond
