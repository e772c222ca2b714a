"""Matched pruning: the sparsity whose perplexity matches a quantized model, and how far
the two methods damage the same SAE features (docs/definitions.md, "Matched pruning").

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

from pytest_qdm.schema.analyses import PruningMatch, PruningStep


def check_match_bits(match_bits: int | None, bits) -> None:
    """Refuse a matched width that is not audited (one line): pruning is matched to the
    perplexity of RTN at ``match_bits``, which the sweep must measure."""
    if match_bits is not None and match_bits not in bits:
        raise ValueError(
            f"match_bits={match_bits} must be one of the audited bits {list(bits)} "
            "(--qdm-match-bits must be among --qdm-bits)"
        )


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
    target = _checked_search(
        perplexity_at, target, low, high, max_steps, rel_tolerance, tokens_used
    )

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
    message = _describe(status, best, target, low, high, len(steps), max_steps, rel_tolerance)
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


def _checked_search(
    perplexity_at, target, low, high, max_steps, rel_tolerance, tokens_used
) -> float:
    """The search's arguments checked (one line per mistake); the target as a float."""
    if not callable(perplexity_at):
        raise TypeError(f"perplexity_at must be callable, got {type(perplexity_at).__name__}")
    if isinstance(target, bool) or not isinstance(target, numbers.Real):
        raise TypeError(f"target must be a real number, got {type(target).__name__}")
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite perplexity > 0, got {target!r}")
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

    return float(target)


def _describe(status, best, target, low, high, evaluations, max_steps, rel_tolerance) -> str:
    """The one-line outcome of the search: how it ended and its closest evaluation."""
    where = f"sparsity {best.sparsity:.6g}: perplexity {best.perplexity:.6g} vs target {target:.6g}"
    messages = {
        "converged": f"matched within {rel_tolerance:.3g} after {evaluations} evaluations at ",
        "not_converged": (
            f"not within {rel_tolerance:.3g} after {max_steps} bisection steps; closest at "
        ),
        "below_range": f"target below the perplexity range over [{low}, {high}]; closest at ",
        "above_range": f"target above the perplexity range over [{low}, {high}]; closest at ",
    }
    return messages[status] + where + f" ({best.rel_error:+.3%})"
