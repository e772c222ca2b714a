"""``detects``: feature k separates positive texts from negative texts.

Score of a text = the feature's maximum activation over its tokens; metric = AUROC
(scikit-learn) of positives against negatives. Reported beside it: the overlap of the
top-N activating token positions on the audit tokens (reference vs compressed). Holds if
the compressed AUROC >= ``min_auroc`` and/or its drop <= ``max_drop``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import model_validator

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


class Detects(Claim):
    kind: ClassVar[str] = "detects"
    feature: int
    positive: list[str]
    negative: list[str]
    min_auroc: float | None = None
    max_drop: float | None = None
    top_n: int = 20

    @model_validator(mode="after")
    def _some_bound(self):
        if self.min_auroc is None and self.max_drop is None:
            raise ValueError("give min_auroc, max_drop or both")
        return self

    def feature_ids(self) -> list[int]:
        return [self.feature]

    def bounds(self) -> str:
        """The claim's bounds, as the report shows them."""
        parts = [f"auroc >= {self.min_auroc:g}"] if self.min_auroc is not None else []
        parts += [f"drop <= {self.max_drop:g}"] if self.max_drop is not None else []
        return ", ".join(parts)

    def text_sets(self) -> dict[str, list[str]]:
        return {"positive": self.positive, "negative": self.negative}

    def measure(self, ctx: ClaimContext, model) -> dict:
        """Max activation of the feature per text, and its codes over the audit tokens."""
        from pytest_qdm.claims.activations import audit_codes, text_codes

        def score(text: str) -> float:
            return float(text_codes(ctx, model, text)[:, self.feature].max())

        top = audit_codes(ctx, model, [self.feature])
        return {
            "positive": np.array([score(t) for t in self.positive]),
            "negative": np.array([score(t) for t in self.negative]),
            "top": None if top is None else top[:, 0].numpy(),
        }

    def judge(self, ctx, reference: dict, compressed: dict, condition: str) -> ClaimResult:
        sizes = (len(self.positive), len(self.negative))

        def auroc_of(scores):
            return lambda p, n: auroc_u(scores["positive"][p], scores["negative"][n])

        ref = auroc(reference["positive"], reference["negative"])
        effect = auroc(compressed["positive"], compressed["negative"])
        ref_ci = bootstrap_ci(auroc_of(reference), sizes, self.resamples)
        detail = {
            "auroc_drop": ref - effect,
            "top_overlap": top_overlap(reference["top"], compressed["top"], self.top_n),
        }
        common = dict(effect=effect, ratio=ratio(effect, ref), detail=detail)
        if not clearly_above(ref_ci, 0.5):
            return no_reference_effect(
                self,
                condition,
                ref,
                ref_ci,
                0.5,
                "AUROC",
                gated="auroc",
                bound=self.bounds(),
                **common,
            )
        checks = []
        if self.min_auroc is not None:
            ci = bootstrap_ci(auroc_of(compressed), sizes, self.resamples)
            checks.append(("auroc", effect, ci, self.min_auroc, True))
        if self.max_drop is not None:
            ci = bootstrap_ci(
                lambda p, n: auroc_of(reference)(p, n) - auroc_of(compressed)(p, n),
                sizes,
                self.resamples,
            )
            checks.append(("auroc_drop", ref - effect, ci, self.max_drop, False))
        outcomes = [
            (
                verdict(self, condition=condition, value=v, ci=ci, bound=b, at_least=up, gated=g),
                g,
                ci,
                b,
                up,
            )
            for g, v, ci, b, up in checks
        ]
        failed = [o for o in outcomes if not o[0][0]]
        (passed, _, end), gated, ci, bound, up = (failed or outcomes)[0]
        message = "; ".join(o[0][1] for o in outcomes)
        return judged(
            self,
            condition,
            ref,
            ref_ci,
            (passed, message, end),
            gated=gated,
            ci=ci,
            bound=f"{'>=' if up else '<='} {bound:g}",
            **common,
        )


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """AUROC of scores, positives labelled 1 (scikit-learn's roc_auc_score)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[positive, negative]))


def auroc_u(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC along the last axis as the Mann-Whitney U of positives over negatives,
    divided by n_pos * n_neg (scipy; equals roc_auc_score, tests/claims pin it)."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(positive, negative, axis=-1, method="asymptotic").statistic
    return u / (positive.shape[-1] * negative.shape[-1])


def top_overlap(reference: np.ndarray | None, compressed: np.ndarray | None, n: int):
    """|top-n positions of the reference ∩ of the compressed| / n, on the audit tokens
    (positions where the feature is 0 on both sides never count; None without tokens)."""
    if reference is None or compressed is None:
        return None
    n = min(n, int((reference > 0).sum()))
    if n == 0:
        return None
    ref_top = set(np.argsort(-reference, kind="stable")[:n].tolist())
    cmp_top = set(np.argsort(-compressed, kind="stable")[:n].tolist())
    return len(ref_top & cmp_top) / n
