"""How many tokens a run needs: the precision of survival at this run's budget, the change
it can detect, and the budget for a target precision, from the run's own shard bootstrap.

The survival interval comes from the cluster bootstrap over shards (docs/definitions.md,
"Stability checks"); its half-width h scales as 1/sqrt(tokens) (each shard's share of the
tokens grows with the budget), so a target half-width h* needs tokens x (h / h*)^2. The
minimum detectable change between two runs of this precision by a two-sided test at 5 %
with 80 % power is (z_0.975 + z_0.8) x sqrt(2) x SE, SE = h / z_0.975 (two independent
runs; a paired test on the same tokens detects less, so this is an upper bound).
"""

from __future__ import annotations

import math

from pytest_qdm.schema.protocol import ProtocolReport, SweepRow

LEVEL, POWER = 0.95, 0.8


def half_width(row: SweepRow) -> float | None:
    """Half the width of the row's survival interval, in percentage points."""
    low, high = row.survived_ci or (None, None)
    return None if low is None or high is None else (high - low) / 2


def _widest(report: ProtocolReport, condition: str | None) -> SweepRow | None:
    rows = [
        r
        for r in report.sweep
        if r.kind != "Reference" and half_width(r) and (condition in (None, r.condition))
    ]
    return max(rows, key=half_width, default=None)


def detectable_change(report: ProtocolReport, condition: str | None = None) -> float | None:
    """The survival change (pp) a two-sided 5 % test detects with 80 % power between two
    runs of this precision (the widest interval, or ``condition``'s)."""
    from scipy.stats import norm

    row = _widest(report, condition)
    if row is None:
        return None
    z = norm.ppf(0.5 + LEVEL / 2)
    return (z + norm.ppf(POWER)) * math.sqrt(2) * half_width(row) / z


def tokens_for(report: ProtocolReport, half_width_pp: float, condition: str | None = None):
    """Audit tokens for a survival interval of ``half_width_pp`` percentage points (the
    widest condition, or ``condition``), scaled from this run's; None without intervals."""
    if not half_width_pp > 0:
        raise ValueError(f"half_width must be > 0 percentage points, got {half_width_pp!r}")
    row = _widest(report, condition)
    if row is None:
        return None
    return math.ceil(report.audit.tokens.n_tokens * (half_width(row) / half_width_pp) ** 2)


def precision_line(report: ProtocolReport, target_pp: float = 1.0) -> str | None:
    """'±2.6 pp at 4,096 tokens (rtn-int4); detects 7.3 pp; ±1 pp needs 27,000 tokens'."""
    row = _widest(report, None)
    if row is None:
        return None
    return (
        f"survival ±{half_width(row):.1f} pp (95%) at {report.audit.tokens.n_tokens:,} tokens "
        f"(widest: {row.condition}); a change of {detectable_change(report):.1f} pp between "
        f"two such runs is detected with 80% power; ±{target_pp:g} pp needs about "
        f"{tokens_for(report, target_pp):,} tokens"
    )
