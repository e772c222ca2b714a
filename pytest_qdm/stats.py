"""Streaming, mergeable per-feature statistics (float64).

Each batch of feature activations [tokens, d_sae] is reduced to per-feature sums over its
nonzero entries only (SAE activations are sparse; zeros add nothing to any sum), in float64.
Batches are then folded into running means and co-moments with the pairwise update of
Chan, Golub & LeVeque (1979), so shards merged in any order equal one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

F64 = torch.float64


def _scatter_sum(d_sae: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.zeros(d_sae, dtype=F64, device=values.device).index_add_(0, index, values)


def _as_2d(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2:
        raise ValueError(f"expected feature activations [tokens, d_sae], got {features.shape}")
    return features


@dataclass
class ReferenceStats:
    """Per-feature firing count, sum and maximum of the reference activations."""

    n_tokens: int
    fire_count: torch.Tensor  # [d_sae] float64: #{t : f(t) > 0}
    total: torch.Tensor  # [d_sae] float64: sum_t f(t)
    nonzero_max: torch.Tensor  # [d_sae] float64: max over nonzero f(t), -inf if none
    nonzero_count: torch.Tensor  # [d_sae] float64: #{t : f(t) != 0}

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str = "cpu") -> ReferenceStats:
        zeros = torch.zeros(d_sae, dtype=F64, device=device)
        return cls(0, zeros.clone(), zeros.clone(), torch.full_like(zeros, -torch.inf), zeros)

    @classmethod
    def of_batch(cls, features: torch.Tensor) -> ReferenceStats:
        features = _as_2d(features)
        n_tokens, d_sae = features.shape
        rows, cols = features.nonzero(as_tuple=True)
        values = features[rows, cols].to(F64)
        nonzero_max = torch.full((d_sae,), -torch.inf, dtype=F64, device=features.device)
        nonzero_max.scatter_reduce_(0, cols, values, reduce="amax")
        return cls(
            n_tokens,
            _scatter_sum(d_sae, cols, (values > 0).to(F64)),
            _scatter_sum(d_sae, cols, values),
            nonzero_max,
            _scatter_sum(d_sae, cols, torch.ones_like(values)),
        )

    def merge(self, other: ReferenceStats) -> ReferenceStats:
        return ReferenceStats(
            self.n_tokens + other.n_tokens,
            self.fire_count + other.fire_count,
            self.total + other.total,
            torch.maximum(self.nonzero_max, other.nonzero_max),
            self.nonzero_count + other.nonzero_count,
        )

    def firing_rate(self) -> np.ndarray:
        return (self.fire_count / max(self.n_tokens, 1)).cpu().numpy()

    def mean_activation(self) -> np.ndarray:
        """Mean over ALL tokens (zeros included)."""
        return (self.total / max(self.n_tokens, 1)).cpu().numpy()

    def max_activation(self) -> np.ndarray:
        """Max over all tokens: a zero counts wherever some token left the feature at 0."""
        has_zero = self.nonzero_count < self.n_tokens
        zero = torch.zeros_like(self.nonzero_max)
        maximum = torch.where(has_zero, torch.maximum(self.nonzero_max, zero), self.nonzero_max)
        return maximum.cpu().numpy()


@dataclass
class PairedStats:
    """Running means and co-moments of (reference x, compressed y) per feature.

    ``m2_x``, ``m2_y`` are sums of squared deviations and ``c_xy`` the sum of co-deviations;
    Pearson r = c_xy / sqrt(m2_x * m2_y). ``fire_count_y`` counts compressed firings (for
    emergent features).
    """

    n: int
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    m2_x: torch.Tensor
    m2_y: torch.Tensor
    c_xy: torch.Tensor
    fire_count_y: torch.Tensor

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str = "cpu") -> PairedStats:
        zeros = torch.zeros(d_sae, dtype=F64, device=device)
        return cls(0, *(zeros.clone() for _ in range(6)))

    @classmethod
    def of_batch(cls, x: torch.Tensor, y: torch.Tensor) -> PairedStats:
        """Statistics of one batch, from the entries where x or y is nonzero."""
        x, y = _as_2d(x), _as_2d(y)
        if x.shape != y.shape:
            raise ValueError(f"paired batches differ in shape: {x.shape} vs {y.shape}")
        n, d_sae = x.shape
        rows, cols = ((x != 0) | (y != 0)).nonzero(as_tuple=True)
        xv, yv = x[rows, cols].to(F64), y[rows, cols].to(F64)
        sum_x, sum_y = _scatter_sum(d_sae, cols, xv), _scatter_sum(d_sae, cols, yv)
        mean_x, mean_y = sum_x / n, sum_y / n
        # Within a batch the raw float64 sums are exact enough; across batches Chan's update.
        m2_x = _scatter_sum(d_sae, cols, xv * xv) - sum_x * mean_x
        m2_y = _scatter_sum(d_sae, cols, yv * yv) - sum_y * mean_y
        c_xy = _scatter_sum(d_sae, cols, xv * yv) - sum_x * mean_y
        fire_y = _scatter_sum(d_sae, cols, (yv > 0).to(F64))
        return cls(n, mean_x, mean_y, m2_x.clamp_min(0), m2_y.clamp_min(0), c_xy, fire_y)

    def merge(self, other: PairedStats) -> PairedStats:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        weight = self.n * other.n / n
        return PairedStats(
            n,
            self.mean_x + dx * (other.n / n),
            self.mean_y + dy * (other.n / n),
            self.m2_x + other.m2_x + dx * dx * weight,
            self.m2_y + other.m2_y + dy * dy * weight,
            self.c_xy + other.c_xy + dx * dy * weight,
            self.fire_count_y + other.fire_count_y,
        )

    def correlation(self) -> tuple[np.ndarray, np.ndarray]:
        """Pearson r per feature and a mask of *silenced* features.

        Where y is constant and x is not, r = 0 and the feature is silenced. Where x is
        constant, r = 1 if y equals it everywhere (zero variance, same mean), else 0.
        """
        m2_x, m2_y, c_xy = (t.cpu().numpy() for t in (self.m2_x, self.m2_y, self.c_xy))
        x_const, y_const = m2_x <= 0, m2_y <= 0
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(c_xy / np.sqrt(m2_x * m2_y), -1.0, 1.0)
        same_mean = np.isclose(self.mean_x.cpu().numpy(), self.mean_y.cpu().numpy())
        r = np.where(y_const & ~x_const, 0.0, r)
        r = np.where(x_const, np.where(y_const & same_mean, 1.0, 0.0), r)
        return r, y_const & ~x_const
