"""Stability checks, computed from mergeable shard states of one pass.

The protocol runs the engine on ``n`` shards (random, disjoint groups of sequences). Since
statistics merge exactly, every check below is a merge of shard states, not a new pass:
token-budget sensitivity merges a growing prefix of shards, disjoint subsets merge disjoint
groups, and the bootstrap resamples shards with replacement (a cluster bootstrap over
sequences: tokens inside a sequence are not independent, so resampling single tokens would
overstate precision).
"""

from __future__ import annotations

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
    """Percentile CI of survival % per condition, resampling shards with replacement."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in shards[0].paired}
    for _ in range(n_resamples):
        counts = rng.multinomial(len(shards), [1 / len(shards)] * len(shards))
        state = merge_all([_scaled(s, int(c)) for s, c in zip(shards, counts, strict=True) if c])
        for name, pct in survival_by_condition(state, config).items():
            if pct is not None:
                samples[name].append(pct)
    tail = 100 * (1 - level) / 2
    return {
        name: ConfidenceInterval(
            low=float(np.percentile(v, tail)) if v else None,
            high=float(np.percentile(v, 100 - tail)) if v else None,
            level=level,
            n_resamples=n_resamples,
        )
        for name, v in samples.items()
    }


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
