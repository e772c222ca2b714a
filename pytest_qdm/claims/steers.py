"""``steers``: adding ``alpha * W_dec[k]`` at the read-out hook raises the target tokens'
log-probability at the prompt's last position.

Per prompt: d = mean_t log p(t | steered) - mean_t log p(t | clean) over the target tokens
t at the last position; the effect on a model is the mean of d over prompts (nats). The
claim holds on a condition if effect / reference effect >= ``min_ratio``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pytest_qdm.claims.base import (
    Claim,
    ClaimContext,
    bootstrap_ci,
    clearly_above,
    judged,
    no_reference_effect,
    ratio,
    verdict,
)
from pytest_qdm.schema.claims import ClaimResult


class Steers(Claim):
    kind: ClassVar[str] = "steers"
    feature: int
    alpha: float
    prompts: list[str]
    targets: list[str]
    min_ratio: float = 0.5

    def feature_ids(self) -> list[int]:
        return [self.feature]

    def text_sets(self) -> dict[str, list[str]]:
        return {"prompts": self.prompts}

    def target_strings(self) -> list[str]:
        return self.targets

    def measure(self, ctx: ClaimContext, model) -> np.ndarray:
        """Per prompt: the steered minus the clean mean target log-probability (nats)."""
        import torch

        target_ids = sorted({i for t in self.targets for i in ctx.target_ids(t)})
        vector = self.alpha * ctx.sae.W_dec[self.feature].detach()
        device = ctx.device_of(model)

        def steer(activation, hook):  # noqa: ARG001 (TransformerLens hook signature)
            shift = vector.to(activation.device, activation.dtype)
            return activation + shift.reshape(activation.shape[2:])

        effects = []
        with torch.inference_mode():
            for prompt in self.prompts:
                tokens = ctx.tokens(prompt).to(device)
                clean = model(tokens)[0, -1]
                steered = model.run_with_hooks(tokens, fwd_hooks=[(ctx.hook, steer)])[0, -1]
                effects.append(
                    float(
                        steered.float().log_softmax(-1)[target_ids].mean()
                        - clean.float().log_softmax(-1)[target_ids].mean()
                    )
                )
        return np.array(effects)

    def judge(self, ctx, reference: np.ndarray, compressed: np.ndarray, condition: str):
        return judge_paired_effect(self, reference, compressed, condition, "steering effect")


def judge_paired_effect(
    claim: Claim, reference: np.ndarray, compressed: np.ndarray, condition: str, what: str
) -> ClaimResult:
    """The verdict of an effect measured per sample on both models (steers, ablates):
    reference effect and its interval (must lie above 0), compressed effect, and the
    ratio of means with a paired bootstrap interval, gated on ``claim.min_ratio``."""
    ref_mean, mean = float(reference.mean()), float(compressed.mean())
    n = (len(reference),)
    ref_ci = bootstrap_ci(lambda i: reference[i].mean(-1), n, claim.resamples)
    common = dict(
        effect=mean, ratio=ratio(mean, ref_mean), gated="ratio", bound=f">= {claim.min_ratio:g}"
    )
    if not clearly_above(ref_ci, 0.0):
        return no_reference_effect(claim, condition, ref_mean, ref_ci, 0.0, what, **common)
    ratio_ci = bootstrap_ci(
        lambda i: compressed[i].mean(-1) / reference[i].mean(-1), n, claim.resamples
    )
    effect_ci = bootstrap_ci(lambda i: compressed[i].mean(-1), n, claim.resamples)
    outcome = verdict(
        claim,
        condition=condition,
        value=common["ratio"],
        ci=ratio_ci,
        bound=claim.min_ratio,
        at_least=True,
        gated="ratio",
    )
    return judged(
        claim,
        condition,
        ref_mean,
        ref_ci,
        outcome,
        ci=ratio_ci,
        detail={
            "effect_ci_low": effect_ci and effect_ci[0],
            "effect_ci_high": effect_ci and effect_ci[1],
        },
        **common,
    )
