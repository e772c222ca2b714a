"""``survives``: the named features keep Pearson r >= ``min_r`` between the reference's
and the compressed model's activations on the audit tokens (the audit's own r, the
claim form of ``assert_features_survive``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from pytest_qdm.claims.base import Claim, ClaimContext, judged, no_reference_effect, verdict
from pytest_qdm.schema.claims import ClaimResult


class Survives(Claim):
    kind: ClassVar[str] = "survives"
    features: list[int]
    min_r: float = 0.9

    def feature_ids(self) -> list[int]:
        return list(self.features)

    def measure(self, ctx: ClaimContext, model) -> None:
        return None  # the audit's pass measured r for every feature

    def judge(self, ctx: ClaimContext, reference, compressed, condition: str) -> ClaimResult:
        if condition not in ctx.correlations:
            raise ValueError(
                f"claim {self.id!r} (survives) needs the audit's r on {condition!r}; pass "
                "tokens= to check_claims"
            )
        r = ctx.correlations[condition][self.features]
        detail = {
            f"r.{k}": (None if np.isnan(v) else float(v))
            for k, v in zip(self.features, r, strict=True)
        }
        worst = float(np.nanmin(r)) if np.isfinite(r).any() else float("nan")
        common = dict(
            effect=worst, ratio=worst, gated="r", bound=f">= {self.min_r:g}", detail=detail
        )
        inactive = [k for k, v in zip(self.features, r, strict=True) if np.isnan(v)]
        if inactive:
            return no_reference_effect(
                self, condition, 1.0, None, 0.0, f"features {inactive} inactive; r", **common
            )
        outcome = verdict(
            self, condition=condition, value=worst, ci=None, bound=self.min_r, at_least=True,
            gated="min r",
        )  # fmt: skip
        return judged(self, condition, 1.0, None, outcome, **common)
