"""Paired regression against a baseline measured on the same tokens with the same SAE.

Per condition present in both, over the features active in both references: each
feature's survived flag (r > the survival threshold) now and in the baseline gives a 2x2
table; McNemar's exact test is the two-sided binomial test of the discordant pairs
(``scipy.stats.binomtest``: ``lost`` features survived only in the baseline, ``gained``
only now, p = 0.5 under no change). The per-feature r are compared by the Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped). docs/definitions.md,
"Paired regression".
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pytest_qdm.schema.audit import AuditResult


class PairedChange(BaseModel):
    """One condition, now vs the baseline, feature by feature."""

    model_config = ConfigDict(frozen=True)

    condition: str
    n_features: int  # active in both references
    lost: int  # survived in the baseline, not now
    gained: int  # survived now, not in the baseline
    survived_change_pp: float  # percentage points, over the paired features
    mcnemar_p: float  # exact (binomial on lost vs gained)
    median_r_change: float
    wilcoxon_p: float | None  # None when every r is unchanged

    def describe(self) -> str:
        wilcoxon = "—" if self.wilcoxon_p is None else f"{self.wilcoxon_p:.3g}"
        return (
            f"{self.condition}: {self.lost} features lost survival, {self.gained} gained "
            f"({self.survived_change_pp:+.1f} pp over {self.n_features}; McNemar exact "
            f"p={self.mcnemar_p:.3g}); median Δr {self.median_r_change:+.4f} (Wilcoxon "
            f"p={wilcoxon})"
        )


def same_tokens(now: AuditResult, baseline: AuditResult) -> str | None:
    """None when both audits read the same tokens at the same hook with an SAE of the same
    width, else what differs."""
    for what, a, b in (
        ("tokens", now.tokens.sha256, baseline.tokens.sha256),
        ("hook", now.hook_name, baseline.hook_name),
        ("SAE width", now.d_sae, baseline.d_sae),
    ):
        if a != b:
            return f"{what} differ ({b!r} in the baseline, {a!r} now)"
    return None


def paired_changes(
    now: AuditResult, baseline: AuditResult, survival_threshold: float | None = None
) -> dict[str, PairedChange]:
    """:class:`PairedChange` per condition in both audits (ValueError if they were not
    measured on the same tokens; ``survival_threshold``: default, the current audit's)."""
    from scipy.stats import binomtest, wilcoxon

    differs = same_tokens(now, baseline)
    if differs is not None:
        raise ValueError(f"a paired comparison needs the baseline's tokens and SAE: {differs}")
    threshold = now.config.survival_threshold if survival_threshold is None else survival_threshold
    active = now.reference.active & baseline.reference.active
    out = {}
    for name, cond in now.conditions.items():
        if name not in baseline.conditions or name == "reference":
            continue
        r_now = np.nan_to_num(cond.correlation[active], nan=0.0)
        r_then = np.nan_to_num(baseline.conditions[name].correlation[active], nan=0.0)
        s_now, s_then = r_now > threshold, r_then > threshold
        lost, gained = int((s_then & ~s_now).sum()), int((s_now & ~s_then).sum())
        diff = r_now - r_then
        moved = diff[diff != 0]
        out[name] = PairedChange(
            condition=name,
            n_features=int(active.sum()),
            lost=lost,
            gained=gained,
            survived_change_pp=100.0 * (gained - lost) / max(int(active.sum()), 1),
            mcnemar_p=binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0,
            median_r_change=float(np.median(diff)) if diff.size else 0.0,
            wilcoxon_p=float(wilcoxon(moved).pvalue) if moved.size else None,
        )
    return out
