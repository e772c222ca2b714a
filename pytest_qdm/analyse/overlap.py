"""Do two compression methods damage the same features? Jaccard of the non-survived and
damaged sets, correlations of damage scores, non-survival by firing-rate decile.
"""

from __future__ import annotations

import math

import numpy as np

from pytest_qdm.analyse.predictor import quantile_bins
from pytest_qdm.schema.analyses import DecileNonSurvival, OverlapResult
from pytest_qdm.settings import SURVIVAL_THRESHOLD


def _sets(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int, float | None]:
    both, either = int((a & b).sum()), int((a | b).sum())
    return int(a.sum()), int(b.sum()), both, either, (both / either if either else None)


def _active_values(correlation_a, correlation_b, active, firing_rate, survival, damage):
    """(r of a, r of b, the active mask, firing rates or None) over active features, checked."""
    a = np.asarray(correlation_a, dtype=np.float64)
    b = np.asarray(correlation_b, dtype=np.float64)
    mask = np.asarray(active)
    if a.ndim != 1 or a.shape != b.shape or mask.shape != a.shape:
        raise ValueError(
            "correlation_a, correlation_b and active must be 1-D with equal lengths, got "
            f"shapes {a.shape}, {b.shape}, {mask.shape}"
        )
    if mask.dtype != bool:
        raise TypeError(f"active must be a boolean mask, got dtype {mask.dtype}")
    if not damage <= survival:
        raise ValueError(
            f"damage_threshold ({damage}) must not exceed survival_threshold ({survival})"
        )
    a, b = a[mask], b[mask]
    for name, values in (("correlation_a", a), ("correlation_b", b)):
        if not np.isfinite(values).all():
            raise ValueError(
                f"{name} has {int((~np.isfinite(values)).sum())} non-finite values among "
                "active features; an audit gives every active feature a finite r"
            )
    rate = None
    if firing_rate is not None:
        rate = np.asarray(firing_rate, dtype=np.float64)
        if rate.shape != mask.shape:
            raise ValueError(f"firing_rate has shape {rate.shape}, expected {mask.shape}")
        rate = rate[mask]
        if not np.isfinite(rate).all():
            raise ValueError("firing_rate has non-finite values among active features")
    return a, b, mask, rate


def _damage_correlations(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """Pearson and Spearman correlation of the damages 1 - r (None where undefined)."""
    damage_a, damage_b = 1.0 - a, 1.0 - b
    if len(a) < 2 or np.ptp(damage_a) == 0 or np.ptp(damage_b) == 0:
        return None, None
    from scipy.stats import pearsonr, spearmanr

    spearman = float(spearmanr(damage_a, damage_b)[0])
    return float(pearsonr(damage_a, damage_b)[0]), spearman if math.isfinite(spearman) else None


def _deciles(rate: np.ndarray, lost_a: np.ndarray, lost_b: np.ndarray) -> list[DecileNonSurvival]:
    """Non-survival of each side per firing-rate decile (np.quantile edges)."""
    edges, index = quantile_bins(rate, 10)
    deciles = []
    for k in range(10):
        in_bin = index == k
        count = int(in_bin.sum())
        na, nb = int(lost_a[in_bin].sum()), int(lost_b[in_bin].sum())
        deciles.append(
            DecileNonSurvival(
                low=float(edges[k]),
                high=float(edges[k + 1]),
                count=count,
                non_survived_a=na,
                non_survived_b=nb,
                rate_a=na / count if count else None,
                rate_b=nb / count if count else None,
            )
        )
    return deciles


def compare_damage(
    correlation_a,
    correlation_b,
    active,
    *,
    firing_rate=None,
    survival_threshold: float = SURVIVAL_THRESHOLD,
    damage_threshold: float = 0.5,
    labels: tuple[str, str] = ("a", "b"),
) -> OverlapResult:
    """Compare the per-feature stability scores r of two methods over active features.

    Not survived: r <= survival_threshold; damaged: r < damage_threshold. ``firing_rate``
    (reference, per feature) adds non-survival by firing-rate decile, with np.quantile
    edges over the active features. Inactive features are ignored (their r may be NaN);
    a NaN r for an active feature raises ValueError.
    """
    a, b, mask, rate = _active_values(
        correlation_a, correlation_b, active, firing_rate, survival_threshold, damage_threshold
    )
    lost_a, lost_b = a <= survival_threshold, b <= survival_threshold
    dead_a, dead_b = a < damage_threshold, b < damage_threshold
    ns = _sets(lost_a, lost_b)
    dm = _sets(dead_a, dead_b)
    pearson, spearman = _damage_correlations(a, b)
    deciles = _deciles(rate, lost_a, lost_b) if rate is not None and len(rate) else None
    return OverlapResult(
        label_a=labels[0],
        label_b=labels[1],
        survival_threshold=float(survival_threshold),
        damage_threshold=float(damage_threshold),
        n_active=int(mask.sum()),
        n_not_survived_a=ns[0],
        n_not_survived_b=ns[1],
        n_not_survived_both=ns[2],
        n_not_survived_either=ns[3],
        jaccard_not_survived=ns[4],
        n_damaged_a=dm[0],
        n_damaged_b=dm[1],
        n_damaged_both=dm[2],
        n_damaged_either=dm[3],
        jaccard_damaged=dm[4],
        pearson_damage=pearson,
        spearman_damage=spearman,
        by_firing_rate_decile=deciles,
    )
