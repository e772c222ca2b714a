"""Which end of a metric's interval a gate check reads (``--qdm-gate-on``).

- ``estimate``: the point estimate (the default, as before);
- ``lower``: the end that is worse for the check, the lower end for a minimum
  (``min_survived``, ``min_top1``) and the upper end for a maximum (``max_kl``): a release
  gate that passes only with evidence;
- ``upper``: the end that is better for the check: a gate that fails only when even the
  favourable end misses the bound, so it does not flap on noise.

Intervals: survival from the cluster bootstrap over shards (``survived_ci``), KL and top-1
agreement from the bootstrap over perplexity rows (``kl_ci``, ``top1_ci``), all at
``--qdm-confidence`` (default 95 %).
Metrics without an interval (damaged %, perplexity change) are read as estimates, and the
verdict says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pytest_qdm.gate.thresholds import GateCheck
    from pytest_qdm.schema.protocol import SweepRow

GateOn = Literal["estimate", "lower", "upper"]
GATE_ON = ("estimate", "lower", "upper")
INTERVALS = {"survived_pct": "survived_ci", "kl": "kl_ci", "top1_agreement": "top1_ci"}


def judged_value(
    row: SweepRow, check: GateCheck, gate_on: GateOn, level: float = 0.95
) -> tuple[float | None, str]:
    """(the value the check compares with its bound, a note saying which it is);
    ``level``: the intervals' (``--qdm-confidence``)."""
    estimate = getattr(row, check.metric)
    if gate_on == "estimate" or estimate is None:
        return estimate, ""
    low, high = getattr(row, INTERVALS.get(check.metric, ""), None) or (None, None)
    if low is None or high is None:
        return estimate, f" (gate on {gate_on}: no interval for {check.metric}, estimate used)"
    pessimistic = (check.direction == "min") == (gate_on == "lower")
    value, end = (low, "lower") if pessimistic else (high, "upper")
    interval = f"{check.shown(low)}–{check.shown(high)}"
    return value, (
        f" (gate on {gate_on}: the {end} end of the {level:.0%} interval [{interval}], "
        f"estimate {check.shown(estimate)})"
    )
