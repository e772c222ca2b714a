"""Matched pruning: the sparsity whose perplexity matches a quantized model, and how far
the two methods damage the same SAE features (DESIGN.md, "Matched pruning").

The reference study searched on fewer tokens than its final run and stopped after 6
bisection steps at a perplexity change of 6.13% against a 3.99% target. Here the caller
searches and evaluates on the same token set (recorded as ``tokens_used``) and the result
reports the remaining error and every step.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from .predictor import quantile_bins


class PruningStep(BaseModel):
    """One perplexity evaluation of the search, in evaluation order."""

    model_config = ConfigDict(frozen=True)

    sparsity: float
    perplexity: float
    rel_error: float


class PruningMatch(BaseModel):
    """Outcome of :func:`match_sparsity`.

    Attributes:
        target: the perplexity to match (e.g. that of RTN at ``match_bits``).
        achieved, sparsity: perplexity and sparsity of the closest step evaluated.
        abs_error, rel_error: achieved - target and achieved / target - 1.
        steps: every evaluation, the two bracket ends first.
        converged: |rel_error| <= rel_tolerance.
        monotone: False if any two evaluations have perplexity falling as sparsity rises.
        status: "converged"; "not_converged" (max_steps used up); "below_range" /
            "above_range" when the target is outside the perplexities at the bracket ends.
        message: the same, in words.
        rel_tolerance, max_steps: the settings used.
        tokens_used: number of tokens the search and the final run were scored on (given
            by the caller; None when not recorded).
    """

    model_config = ConfigDict(frozen=True)

    target: float
    achieved: float
    sparsity: float
    abs_error: float
    rel_error: float
    steps: list[PruningStep]
    converged: bool
    monotone: bool
    status: Literal["converged", "not_converged", "below_range", "above_range"]
    message: str
    rel_tolerance: float
    max_steps: int
    tokens_used: int | None


def match_sparsity(
    perplexity_at: Callable[[float], float],
    target: float,
    *,
    low: float = 0.0,
    high: float = 0.9,
    max_steps: int = 12,
    rel_tolerance: float = 0.005,
    tokens_used: int | None = None,
) -> PruningMatch:
    """Bisect sparsity in [low, high] for perplexity_at(sparsity) == target.

    Perplexity is assumed to rise with sparsity. Both bracket ends are evaluated first,
    then at most ``max_steps`` midpoints; the search stops as soon as
    |ppl / target - 1| <= rel_tolerance. The bracket is narrowed by the sign of
    ppl - target, so a non-monotone curve still yields a crossing of the evaluated
    points; the closest evaluation is returned either way and ``monotone`` says whether
    the evaluations contradicted the assumption. A target outside the perplexities at the
    bracket ends is reported (status below_range / above_range) with the closer end.
    """
    if not callable(perplexity_at):
        raise TypeError(f"perplexity_at must be callable, got {type(perplexity_at).__name__}")
    if isinstance(target, bool) or not isinstance(target, numbers.Real):
        raise TypeError(f"target must be a real number, got {type(target).__name__}")
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite perplexity > 0, got {target!r}")
    target = float(target)
    if not 0.0 <= low < high < 1.0:
        raise ValueError(f"need 0 <= low < high < 1, got low={low!r}, high={high!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be an integer >= 0, got {max_steps!r}")
    if not (math.isfinite(rel_tolerance) and rel_tolerance >= 0):
        raise ValueError(f"rel_tolerance must be finite and >= 0, got {rel_tolerance!r}")
    if tokens_used is not None and (
        isinstance(tokens_used, bool) or not isinstance(tokens_used, int) or tokens_used < 0
    ):
        raise ValueError(f"tokens_used must be a non-negative integer, got {tokens_used!r}")

    steps: list[PruningStep] = []

    def evaluate(sparsity: float) -> PruningStep:
        value = float(perplexity_at(sparsity))
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"perplexity_at({sparsity}) returned {value!r}; expected > 0")
        step = PruningStep(sparsity=sparsity, perplexity=value, rel_error=value / target - 1)
        steps.append(step)
        return step

    def done(step: PruningStep) -> bool:
        return abs(step.rel_error) <= rel_tolerance

    lo, hi = evaluate(low), evaluate(high)
    bottom, top = sorted((lo.perplexity, hi.perplexity))
    if done(lo) or done(hi):
        status = "converged"
    elif target < bottom:
        status = "below_range"
    elif target > top:
        status = "above_range"
    else:
        status = "not_converged"
        for _ in range(max_steps):
            mid = evaluate((lo.sparsity + hi.sparsity) / 2)
            if done(mid):
                status = "converged"
                break
            if (mid.rel_error > 0) == (lo.rel_error > 0):
                lo = mid
            else:
                hi = mid

    best = min(steps, key=lambda s: abs(s.rel_error))  # first of equals: earliest step
    ordered = sorted(steps, key=lambda s: s.sparsity)
    monotone = all(a.perplexity <= b.perplexity for a, b in itertools.pairwise(ordered))
    where = f"sparsity {best.sparsity:.6g}: perplexity {best.perplexity:.6g} vs target {target:.6g}"
    messages = {
        "converged": f"matched within {rel_tolerance:.3g} after {len(steps)} evaluations at ",
        "not_converged": (
            f"not within {rel_tolerance:.3g} after {max_steps} bisection steps; closest at "
        ),
        "below_range": f"target below the perplexity range over [{low}, {high}]; closest at ",
        "above_range": f"target above the perplexity range over [{low}, {high}]; closest at ",
    }
    message = messages[status] + where + f" ({best.rel_error:+.3%})"
    if not monotone:
        message += "; perplexity is not monotone in sparsity over the evaluated points"
    return PruningMatch(
        target=float(target),
        achieved=best.perplexity,
        sparsity=best.sparsity,
        abs_error=best.perplexity - target,
        rel_error=best.rel_error,
        steps=steps,
        converged=done(best),
        monotone=monotone,
        status=status,
        message=message,
        rel_tolerance=float(rel_tolerance),
        max_steps=max_steps,
        tokens_used=tokens_used,
    )


class DecileNonSurvival(BaseModel):
    """Non-survival of both methods in one reference firing-rate decile.

    The bin is [low, high), the last one closed; rates are None for an empty bin.
    """

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    count: int
    non_survived_a: int
    non_survived_b: int
    rate_a: float | None
    rate_b: float | None


class OverlapResult(BaseModel):
    """How alike two compression methods damage the active features.

    Jaccard = |A & B| / |A | B|; it is None when both sets are empty (undefined, rather
    than a misleading 1.0). Correlations of the damage scores 1 - r are None when either
    side is constant or fewer than two features are active.
    """

    model_config = ConfigDict(frozen=True)

    label_a: str
    label_b: str
    survival_threshold: float
    damage_threshold: float
    n_active: int
    n_not_survived_a: int
    n_not_survived_b: int
    n_not_survived_both: int
    n_not_survived_either: int
    jaccard_not_survived: float | None
    n_damaged_a: int
    n_damaged_b: int
    n_damaged_both: int
    n_damaged_either: int
    jaccard_damaged: float | None
    pearson_damage: float | None
    spearman_damage: float | None
    by_firing_rate_decile: list[DecileNonSurvival] | None


def _sets(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int, float | None]:
    both, either = int((a & b).sum()), int((a | b).sum())
    return int(a.sum()), int(b.sum()), both, either, (both / either if either else None)


def compare_damage(
    correlation_a,
    correlation_b,
    active,
    *,
    firing_rate=None,
    survival_threshold: float = 0.9,
    damage_threshold: float = 0.5,
    labels: tuple[str, str] = ("a", "b"),
) -> OverlapResult:
    """Compare the per-feature stability scores r of two methods over active features.

    Not survived: r <= survival_threshold; damaged: r < damage_threshold. ``firing_rate``
    (reference, per feature) adds non-survival by firing-rate decile, with np.quantile
    edges over the active features. Inactive features are ignored (their r may be NaN);
    a NaN r for an active feature raises ValueError.
    """
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
    if not damage_threshold <= survival_threshold:
        raise ValueError(
            f"damage_threshold ({damage_threshold}) must not exceed "
            f"survival_threshold ({survival_threshold})"
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

    lost_a, lost_b = a <= survival_threshold, b <= survival_threshold
    dead_a, dead_b = a < damage_threshold, b < damage_threshold
    ns = _sets(lost_a, lost_b)
    dm = _sets(dead_a, dead_b)

    pearson = spearman = None
    damage_a, damage_b = 1.0 - a, 1.0 - b
    if len(a) >= 2 and np.ptp(damage_a) > 0 and np.ptp(damage_b) > 0:
        from scipy.stats import pearsonr, spearmanr

        pearson = float(pearsonr(damage_a, damage_b)[0])
        spearman_value = float(spearmanr(damage_a, damage_b)[0])
        spearman = spearman_value if math.isfinite(spearman_value) else None

    deciles = None
    if rate is not None and len(rate):
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
