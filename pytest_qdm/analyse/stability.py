"""Stability checks, computed from mergeable shard states of one pass.

The protocol runs the engine on ``n`` shards (random, disjoint groups of sequences). Since
statistics merge exactly, every check below is a merge of shard states, not a new pass:
token-budget sensitivity merges a growing prefix of shards, disjoint subsets merge disjoint
groups, and the bootstrap resamples shards with replacement (a cluster bootstrap over
sequences: tokens inside a sequence are not independent, so resampling single tokens would
overstate precision).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import reduce

import numpy as np
from pydantic import BaseModel, ConfigDict

from pytest_qdm.schema.analyses import ConfidenceInterval, GridCell, NullCheck, SurvivalSpread
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.engine import EngineState
from pytest_qdm.stream.stats import PairedStats, ReferenceStats

SURVIVAL_GRID = (0.80, 0.85, 0.90, 0.95)
DAMAGE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


def merge_all(states: Sequence[EngineState]) -> EngineState:
    return reduce(EngineState.merge, states)


def survival_by_condition(state: EngineState, config: AuditConfig) -> dict[str, float | None]:
    """Survival % of each condition over the features active in ``state``'s reference."""
    active = state.reference.firing_rate() > config.active_threshold
    result = {}
    for name, paired in state.paired.items():
        r, _ = paired.correlation()
        result[name] = (
            float(100 * (r[active] > config.survival_threshold).mean()) if active.any() else None
        )
    return result


def _spread(label: str, states: list[EngineState], config: AuditConfig) -> SurvivalSpread:
    rows = [survival_by_condition(s, config) for s in states]
    names = list(rows[0])
    values = {n: [row[n] for row in rows] for n in names}
    spread = {
        n: (max(v) - min(v)) if all(x is not None for x in v) else None for n, v in values.items()
    }
    tokens = [s.reference.n_tokens for s in states]
    return SurvivalSpread(label=label, tokens=tokens, survived_pct=values, spread=spread)


def budget_sensitivity(
    shards: list[EngineState], fractions: Sequence[float], config: AuditConfig
) -> SurvivalSpread:
    """Survival on growing prefixes of the (randomly ordered) shards."""
    prefixes = [max(1, round(f * len(shards))) for f in fractions]
    return _spread("token budget", [merge_all(shards[:k]) for k in prefixes], config)


def disjoint_subsets(shards: list[EngineState], k: int, config: AuditConfig) -> SurvivalSpread:
    """Survival on ``k`` disjoint groups of shards."""
    k = max(1, min(k, len(shards)))
    groups = [merge_all(shards[i::k]) for i in range(k)]
    return _spread(f"{k} disjoint subsets", groups, config)


def threshold_grid(result: AuditResult, conditions: Sequence[str]) -> dict[str, list[GridCell]]:
    """Survived and damaged % on the survival x damage threshold grid."""
    active = result.reference.active
    grid = {}
    for name in conditions:
        r = result.conditions[name].correlation[active]
        cells = []
        for s in SURVIVAL_GRID:
            for d in DAMAGE_GRID:
                survived = float(100 * (r > s).mean()) if r.size else None
                damaged = float(100 * (r < d).mean()) if r.size else None
                cells.append(
                    GridCell(
                        survival_threshold=s,
                        damage_threshold=d,
                        survived_pct=survived,
                        damaged_pct=damaged,
                    )
                )
        grid[name] = cells
    return grid


def _scaled(state: EngineState, copies: int) -> EngineState:
    """``copies`` identical copies of a shard merged: counts and co-moments scale."""
    ref, c = state.reference, float(copies)
    reference = ReferenceStats(
        ref.n_tokens * copies,
        ref.fire_count * c,
        ref.total * c,
        ref.nonzero_max,
        ref.nonzero_count * c,
        ref.total_sq * c,
    )
    paired = {
        name: PairedStats(
            p.n * copies, p.mean_x, p.mean_y, p.m2_x * c, p.m2_y * c, p.c_xy * c, p.fire_count_y * c
        )
        for name, p in state.paired.items()
    }
    return EngineState(reference, paired)


def bootstrap_survival(
    shards: list[EngineState], config: AuditConfig, n_resamples: int, seed: int, level: float = 0.95
) -> dict[str, ConfidenceInterval]:
    """Normal bootstrap CI of survival % per condition: the estimate plus or minus z times
    the standard error of ``n_resamples`` cluster resamples of the shards (with
    replacement, ``scipy.stats.bootstrap``), clipped to 0..100.

    Centred on the estimate on purpose: the resampled survival is biased, so percentile
    intervals can miss the estimate itself (a resample lacking some shards also lacks the
    rare, fragile features only they activate, and estimates r from fewer distinct tokens).
    Fewer than two shards give no interval."""
    from scipy.stats import bootstrap, norm

    names = list(shards[0].paired)
    full = survival_by_condition(merge_all(shards), config)

    def survival(indices: np.ndarray) -> np.ndarray:
        counts = np.bincount(indices.astype(int), minlength=len(shards))
        state = merge_all([_scaled(s, int(c)) for s, c in zip(shards, counts, strict=True) if c])
        values = survival_by_condition(state, config)
        return np.array([np.nan if values[n] is None else values[n] for n in names])

    error = np.full(len(names), np.nan)
    if len(shards) >= 2 and n_resamples >= 2:
        with warnings.catch_warnings():  # the percentile ends of degenerate resamples: unused
            warnings.simplefilter("ignore")
            result = bootstrap(
                (np.arange(len(shards)),),
                survival,
                n_resamples=n_resamples,
                method="percentile",
                vectorized=False,
                rng=np.random.default_rng(seed),
            )
        error = result.standard_error
    z = float(norm.ppf(0.5 + level / 2))

    def interval(name: str, se: float) -> ConfidenceInterval:
        value = full[name]
        ok = value is not None and np.isfinite(se)
        return ConfidenceInterval(
            low=max(0.0, value - z * se) if ok else None,
            high=min(100.0, value + z * se) if ok else None,
            level=level,
            n_resamples=n_resamples,
        )

    return {name: interval(name, float(error[i])) for i, name in enumerate(names)}


def null_check(
    result: AuditResult, name: str = "reference", tolerance: float = 1e-6
) -> NullCheck | None:
    """The reference-vs-reference null, if the audit ran the Reference condition."""
    if name not in result.conditions:
        return None
    cond = result.conditions[name]
    r = cond.correlation[result.reference.active]
    deviation = float(np.max(np.abs(r - 1))) if r.size else None
    return NullCheck(
        condition=name,
        max_abs_deviation=deviation,
        n_damaged=cond.summary.damaged_count,
        tolerance=tolerance,
        passed=deviation is not None and deviation <= tolerance and cond.summary.damaged_count == 0,
    )
