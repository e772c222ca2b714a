"""Token-level lenses on the same pass: sample correlation, top-k agreement, Procrustes.

x / y are the reference / compressed feature activations, A / B the read-out activations:

- sample correlation: per token, Pearson(x_t, y_t) across features, averaged over tokens
  where both vary;
- top-k agreement: |topk(x_t) ∩ topk(y_t)| / k over tokens with at least k active features;
- Procrustes: min over orthogonal R of ||A R - B||_F / ||B||_F from the streamed
  uncentred A^T B (scipy at the end), beside the unaligned ||A - B||_F / ||B||_F.

Why they read high while features fail: docs/reading-the-report.md. The engine feeds these
float64 sums from the per-feature statistics' sparse entries; shards merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from pytest_qdm.schema.audit import TokenAgreement
from pytest_qdm.stream.stats import BlockPair, Entries, PairedSums

F64 = torch.float64


def _row_sum(n_rows: int, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=F64, device=values.device).index_add_(0, rows, values)


@dataclass(frozen=True)
class TokenReference:
    """The reference side of one block: per-token sums over features and the top-k."""

    d_sae: int
    total: torch.Tensor  # [tokens] sum_i x_ti
    total_sq: torch.Tensor  # [tokens] sum_i x_ti^2
    eligible: torch.Tensor | None  # [eligible tokens] rows with >= k active features (None: all)
    top: torch.Tensor  # [eligible tokens, k] feature ids

    @classmethod
    def of(cls, x: torch.Tensor, entries: Entries, k: int) -> TokenReference:
        n = x.shape[0]
        active = _row_sum(n, entries.rows, (entries.values > 0).to(F64))
        # row ids, found once per block here, so that a condition's side indexes y without
        # a host synchronisation (a boolean mask would need one per condition)
        eligible = (active >= k).nonzero().squeeze(1)
        if len(eligible) == n:  # the usual case: no copy of the block's rows
            eligible = None
        return cls(
            x.shape[1],
            _row_sum(n, entries.rows, entries.values),
            _row_sum(n, entries.rows, entries.values.square()),
            eligible,
            _rows(top_k(x, entries, k)[1], eligible),
        )


def _rows(features: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return features if rows is None else features[rows]


def top_k(features: torch.Tensor, entries: Entries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``features``, the k largest values and their feature ids, as ``topk``
    gives them up to the choice among exact ties. On CPU from the nonzero ``entries``
    (about L0 per row instead of d_sae; rows with fewer than k are padded with value 0 and
    id -1, where topk would pick zeros); elsewhere topk of the dense block."""
    if features.device.type != "cpu":
        top = features.topk(k, dim=1)
        return top.values, top.indices
    n, rows = features.shape[0], entries.rows
    counts = torch.bincount(rows, minlength=n)
    width = max(k, int(counts.max()) if len(rows) else 0)
    flat = rows * width + torch.arange(len(rows)) - (counts.cumsum(0) - counts)[rows]
    values = torch.zeros(n * width, dtype=features.dtype).index_put_(
        (flat,), entries.values.to(features.dtype)
    )
    ids = torch.full((n * width,), -1).index_put_((flat,), entries.cols)
    top = values.view(n, width).topk(k, dim=1)
    return top.values, ids.view(n, width).gather(1, top.indices)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` holds, as a 0-dim tensor: on CPU over the selected
    entries (the sums of earlier versions, bit for bit), elsewhere with the others zeroed
    (a boolean selection would synchronise with the host)."""
    if values.device.type == "cpu":
        return values[mask].sum()
    return torch.where(mask, values, 0.0).sum()


@dataclass
class AgreementSums:
    """Mergeable sums behind :class:`TokenAgreement`.

    While a pass runs the numbers are 0-dim tensors on its device (float64 sums, int64
    counts), added without a host synchronisation; :meth:`result` reads them once."""

    corr_sum: float = 0.0
    corr_count: int = 0
    topk_sum: float = 0.0
    topk_count: int = 0
    cross: torch.Tensor | None = field(default=None, repr=False)  # A^T B [d_model, d_model]
    norm_a: float = 0.0  # ||A||_F^2
    norm_b: float = 0.0
    diff: float = 0.0  # ||A - B||_F^2, summed directly (exact where A = B)

    def add_block(
        self, ref: TokenReference, x: Entries, y: torch.Tensor, pair: BlockPair, k: int
    ) -> None:
        """Add one block of compressed features ``y``; ``pair`` holds its sparse sums."""
        n, d = y.shape
        total_y = _row_sum(n, pair.y.rows, pair.y.values)
        total_y_sq = _row_sum(n, pair.y.rows, pair.y.values.square())
        total_xy = _row_sum(n, x.rows, pair.xy)
        var_x = ref.total_sq - ref.total.square() / d
        var_y = total_y_sq - total_y.square() / d
        valid = (var_x > 0) & (var_y > 0)
        cov = total_xy - ref.total * total_y / d
        self.corr_sum += _masked_sum(cov / (var_x * var_y).sqrt(), valid)
        self.corr_count += valid.sum()
        if ref.top.shape[0]:
            values, ids = (_rows(t, ref.eligible) for t in top_k(y, pair.y, k))
            fired = (values > 0).unsqueeze(1)
            shared = (ref.top.unsqueeze(2) == ids.unsqueeze(1)) & fired
            self.topk_sum += shared.any(2).sum().to(F64) / k
            self.topk_count += ref.top.shape[0]

    def add_readout(self, act_x: torch.Tensor, act_y: torch.Tensor) -> None:
        """Add read-out activations A (reference) and B (condition), [tokens, d_model]."""
        a, b = act_x.to(F64), act_y.to(F64)
        cross = a.T @ b
        self.cross = cross if self.cross is None else self.cross + cross
        self.norm_a += a.square().sum()
        self.norm_b += b.square().sum()
        self.diff += (a - b).square().sum()

    @classmethod
    def of_batch(cls, x, y, act_x, act_y, k: int) -> AgreementSums:
        """From dense feature activations x, y [tokens, d_sae] and read-outs [tokens, d]."""
        entries = Entries.of(x)
        pair = PairedSums(x.shape[0], *PairedSums.reference(x.shape[1], entries)).add(entries, y)
        sums = cls()
        sums.add_block(TokenReference.of(x, entries, k), entries, y, pair, k)
        sums.add_readout(act_x, act_y)
        return sums

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
        norm_a, norm_b, diff = float(self.norm_a), float(self.norm_b), float(self.diff)
        corr_sum, corr_count = float(self.corr_sum), int(self.corr_count)
        topk_sum, topk_count = float(self.topk_sum), int(self.topk_count)
        if self.cross is not None and norm_b > 0:
            cross = self.cross.cpu().numpy()
            singular = svd(cross, compute_uv=False)  # max tr(R^T A^T B) over orthogonal R
            aligned = np.sqrt(max(norm_a + norm_b - 2 * singular.sum(), 0) / norm_b)
            unaligned = np.sqrt(diff / norm_b)
        return TokenAgreement(
            sample_correlation=corr_sum / corr_count if corr_count else None,
            n_correlated_tokens=corr_count,
            topk_agreement=topk_sum / topk_count if topk_count else None,
            k=k,
            n_topk_tokens=topk_count,
            procrustes_aligned_error=None if aligned is None else float(aligned),
            unaligned_error=None if unaligned is None else float(unaligned),
        )
