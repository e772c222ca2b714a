"""Token-level lenses on the same pass: sample correlation, top-k agreement, Procrustes.

These are the measures of SAE-transfer work on compressed models. They average over tokens,
so they are dominated by each token's few high-magnitude features: a per-token correlation
of 0.99 is compatible with a third of the features being damaged, because a damaged
feature is usually a rare or weak one that barely moves a token's feature vector. The
per-feature Pearson of the audit is the lens that sees those.

All statistics are sums (float64), so shards merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

F64 = torch.float64


class TokenAgreement(BaseModel):
    """Token-level agreement of one condition with the reference."""

    model_config = ConfigDict(frozen=True)

    sample_correlation: float | None  # mean over tokens of Pearson(x_t, y_t) across features
    n_correlated_tokens: int
    topk_agreement: float | None  # mean |topk(x_t) ∩ topk(y_t)| / k
    k: int
    n_topk_tokens: int  # tokens where the reference has >= k active features
    procrustes_aligned_error: float | None  # ||A R - B|| / ||B||, R orthogonal
    unaligned_error: float | None  # ||A - B|| / ||B||


@dataclass
class AgreementSums:
    """Mergeable sums behind :class:`TokenAgreement` (A: reference read-out, B: condition)."""

    corr_sum: float = 0.0
    corr_count: int = 0
    topk_sum: float = 0.0
    topk_count: int = 0
    cross: torch.Tensor | None = None  # A^T B, [d_model, d_model]
    norm_a: float = 0.0
    norm_b: float = 0.0

    @classmethod
    def of_batch(cls, x, y, act_x, act_y, k: int) -> AgreementSums:
        """From feature activations x, y [tokens, d_sae] and read-outs [tokens, d_model]."""
        xd, yd = x.to(F64), y.to(F64)
        xc, yc = xd - xd.mean(1, keepdim=True), yd - yd.mean(1, keepdim=True)
        denom = (xc.square().sum(1) * yc.square().sum(1)).sqrt()
        valid = denom > 0
        corr = (xc * yc).sum(1)[valid] / denom[valid]
        eligible = (x > 0).sum(1) >= k
        overlap = 0.0
        if eligible.any():
            top_x = x[eligible].topk(k, dim=1).indices
            top_y = y[eligible].topk(k, dim=1)
            fired = (top_y.values > 0).unsqueeze(1)  # a zero is no top-k feature
            shared = (top_x.unsqueeze(2) == top_y.indices.unsqueeze(1)) & fired
            overlap = float(shared.any(2).sum()) / k
        a, b = act_x.to(F64), act_y.to(F64)
        return cls(
            float(corr.sum()),
            int(valid.sum()),
            overlap,
            int(eligible.sum()),
            a.T @ b,
            float(a.square().sum()),
            float(b.square().sum()),
        )

    def merge(self, other: AgreementSums) -> AgreementSums:
        if self.cross is None:
            return other
        if other.cross is None:
            return self
        values = [getattr(self, f.name) + getattr(other, f.name) for f in fields(self)]
        return AgreementSums(*values)

    def result(self, k: int) -> TokenAgreement:
        from scipy.linalg import svd

        aligned = unaligned = None
        if self.cross is not None and self.norm_b > 0:
            cross = self.cross.cpu().numpy()
            singular = svd(cross, compute_uv=False)  # max tr(R^T A^T B) over orthogonal R
            aligned = np.sqrt(max(self.norm_a + self.norm_b - 2 * singular.sum(), 0) / self.norm_b)
            trace = float(np.trace(cross))
            unaligned = np.sqrt(max(self.norm_a + self.norm_b - 2 * trace, 0) / self.norm_b)
        return TokenAgreement(
            sample_correlation=self.corr_sum / self.corr_count if self.corr_count else None,
            n_correlated_tokens=self.corr_count,
            topk_agreement=self.topk_sum / self.topk_count if self.topk_count else None,
            k=k,
            n_topk_tokens=self.topk_count,
            procrustes_aligned_error=None if aligned is None else float(aligned),
            unaligned_error=None if unaligned is None else float(unaligned),
        )
