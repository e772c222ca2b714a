"""What every claim kind shares: the typed base model, the measuring context (the SAE,
the read-out hook, the prompts tokenized once for both models), the bootstrap interval
and the verdict.

A kind module defines a :class:`Claim` subclass with ``measure(ctx, model)`` (per-sample
numbers on one model) and ``judge(ctx, reference, compressed, condition)`` (a
:class:`ClaimResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from pytest_qdm.schema.claims import ClaimResult

if TYPE_CHECKING:
    import torch

CONFIDENCE = 0.95


class Claim(BaseModel):
    """A claim's common fields: its ``id``, its ``kind`` and where its bound is checked.

    ``gate_on="estimate"`` checks the bound on the point estimate; ``"interval"`` on the
    end of the 95% bootstrap interval that is worse for the claim (the lower end of a
    ratio or AUROC, the upper end of a drop)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]
    id: str
    gate_on: Literal["estimate", "interval"] = "estimate"
    resamples: int = 1000

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not value or any(c in value for c in "[]:/ \t\n"):
            raise ValueError(f"id {value!r} must be non-empty, without spaces, [ ] : or /")
        return value

    def feature_ids(self) -> list[int]:
        """The SAE features the claim names (checked against the SAE's width)."""
        return []

    def text_sets(self) -> dict[str, list[str]]:
        """Every text set the claim names, by field (each must be non-empty)."""
        return {}

    def target_strings(self) -> list[str]:
        """Strings that must tokenize to at least one token."""
        return []

    def measure(self, ctx: ClaimContext, model) -> Any:
        raise NotImplementedError

    def judge(self, ctx: ClaimContext, reference: Any, compressed: Any, condition: str):
        raise NotImplementedError


@dataclass
class ClaimContext:
    """What measuring needs besides the model: the SAE, its hook, the reference model's
    tokenizer (prompts become the same token ids for every model), optional audit tokens
    (top contexts) and per-condition Pearson r (``survives``)."""

    sae: Any
    hook: str
    reference: Any  # the reference model: tokenizes every text
    prepend_bos: bool = True
    audit_tokens: torch.Tensor | None = None
    correlations: dict[str, np.ndarray] = field(default_factory=dict)
    _tokens: dict[str, torch.Tensor] = field(default_factory=dict)

    def tokens(self, text: str) -> torch.Tensor:
        """``text`` as token ids [1, n] on the reference model's device (cached)."""
        if text not in self._tokens:
            self._tokens[text] = self.reference.to_tokens(text, prepend_bos=self.prepend_bos)
        return self._tokens[text]

    def target_ids(self, text: str) -> list[int]:
        """The token ids of a target string (no BOS)."""
        return self.reference.to_tokens(text, prepend_bos=False)[0].tolist()

    def device_of(self, model):
        return next(model.parameters()).device


def bootstrap_ci(statistic, sizes: tuple[int, ...], resamples: int, seed: int = 0):
    """95% percentile interval of ``statistic(*index_arrays)`` under resampling each of
    ``len(sizes)`` groups of samples with replacement, independently: scipy's bootstrap
    over sample indices. A paired statistic indexes both models' arrays with the same
    indices; a two-group one (positives, negatives) resamples each group on its own. The
    statistic is vectorized: index arrays come as [..., n] and it reduces the last axis.
    None when a group has fewer than two samples or the interval is undefined."""
    from scipy.stats import bootstrap

    if min(sizes) < 2:
        return None

    def on_indices(*indices, axis=-1):  # noqa: ARG001 (scipy passes axis=-1)
        return statistic(*indices)

    with np.errstate(all="ignore"):
        result = bootstrap(
            tuple(np.arange(n) for n in sizes),
            on_indices,
            n_resamples=resamples,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            paired=False,
            random_state=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    return float(low), float(high)


def ratio(effect: float, reference: float) -> float | None:
    return None if reference == 0 else float(effect / reference)


def verdict(
    claim: Claim,
    *,
    condition: str,
    value: float,
    ci: tuple[float, float] | None,
    bound: float,
    at_least: bool,
    gated: str,
) -> tuple[bool, str, Literal["estimate", "lower", "upper"]]:
    """Whether ``gated`` meets ``bound`` (>= if ``at_least`` else <=), on the estimate or,
    with ``gate_on="interval"``, on the interval's end that is worse for the claim; also
    the one-line reason and which end was used."""
    end: Literal["estimate", "lower", "upper"] = "estimate"
    if claim.gate_on == "interval" and ci is not None:
        end = "lower" if at_least else "upper"
        value = ci[0] if at_least else ci[1]
    passed = value >= bound if at_least else value <= bound
    sign = ">=" if at_least else "<="
    where = "" if end == "estimate" else f" ({end} end of the 95% interval)"
    word = "holds" if passed else "fails"
    reason = (
        f"{claim.id} {word} on {condition}: {gated} {value:.4g}{where}, {sign} {bound:g} required"
    )
    return passed, reason, end


def claim_result(
    claim: Claim, condition: str, reference: float, reference_ci, **fields
) -> ClaimResult:
    """``claim``'s result on ``condition`` with its reference effect and interval; ``fields``:
    the rest of :class:`~pytest_qdm.schema.claims.ClaimResult` (status, message, effect, ...)."""
    return ClaimResult(
        claim=claim.id,
        kind=claim.kind,
        condition=condition,
        reference_effect=reference,
        reference_ci=reference_ci,
        **fields,
    )


def judged(
    claim: Claim,
    condition: str,
    reference: float,
    reference_ci: tuple[float, float] | None,
    outcome: tuple[bool, str, Literal["estimate", "lower", "upper"]],
    **fields,
) -> ClaimResult:
    """The result of a claim judged on ``condition``: ``outcome`` is :func:`verdict`'s
    (passed, one-line reason, interval end used); ``fields``: effect, ratio, gated, bound,
    ci, detail."""
    passed, message, end = outcome
    status = "holds" if passed else "fails"
    return claim_result(
        claim, condition, reference, reference_ci, gate_end=end, status=status, message=message,
        **fields,
    )  # fmt: skip


def no_reference_effect(
    claim: Claim, condition: str, reference: float, reference_ci, null: float, what: str, **fields
) -> ClaimResult:
    """The result of a claim whose reference effect is not clearly above ``null``: the
    interval includes it, so there is nothing for compression to keep."""
    shown = "n/a" if reference_ci is None else f"[{reference_ci[0]:.4g}, {reference_ci[1]:.4g}]"
    message = (
        f"{claim.id}: no reference effect ({what} {reference:.4g}, 95% interval {shown} "
        f"does not exclude {null:g}); the claim does not hold on the reference model"
    )
    status = "no reference effect"
    return claim_result(
        claim, condition, reference, reference_ci, status=status, message=message, **fields
    )


def clearly_above(ci: tuple[float, float] | None, null: float) -> bool:
    """Whether a 95% interval lies wholly above ``null``."""
    return ci is not None and ci[0] > null
