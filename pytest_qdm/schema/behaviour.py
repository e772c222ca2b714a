"""Typed results of the behavioural comparison with the reference (analyse/behaviour.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BehaviourResult(BaseModel):
    """Next-token agreement of one condition with the reference on the perplexity tokens.

    Attributes:
        kl, kl_reverse: mean KL(reference || condition) and KL(condition || reference)
            per scored position, nats.
        top1_agreement: share of positions whose top token is the reference's.
        topk_token_overlap: mean |top-k ∩ reference top-k| / k.
        top_prob_change: mean change of the probability of the reference's top token.
        kl_ci, top1_ci: bootstrap intervals (rows resampled) at ``confidence``.
    """

    model_config = ConfigDict(frozen=True)

    kl: float
    kl_reverse: float
    top1_agreement: float
    topk_token_overlap: float
    top_prob_change: float
    kl_ci: tuple[float, float] | None = None
    top1_ci: tuple[float, float] | None = None
    top_k: int
    n_positions: int
    confidence: float = 0.95
