"""The noise floor stated from the sweep rows: the worst survival among the noise-floor
conditions, and the compressed conditions whose survival is within its reach."""

from __future__ import annotations

from pytest_qdm.compress.noise_floor import FLOOR_PREFIX
from pytest_qdm.schema.protocol import NOISE_FLOOR, WITHIN_NOISE_FLOOR, Finding, SweepRow


def floor_findings(rows: list[SweepRow]) -> list[Finding]:
    """One ``noise_floor`` finding naming the floor (the lowest survival of a
    ``floor-*`` row) and each compressed condition whose survival interval reaches it
    (upper end >= the floor's estimate): its damage is not told apart from changes that
    are not compression. None without noise-floor rows."""
    floors = [
        r for r in rows if r.condition.startswith(FLOOR_PREFIX) and r.survived_pct is not None
    ]
    if not floors:
        return []
    worst = min(floors, key=lambda r: r.survived_pct)
    findings = [
        Finding(
            kind=NOISE_FLOOR,
            condition=worst.condition,
            message=(
                f"noise floor: {worst.condition} keeps {worst.survived_pct:.1f}% of active "
                "features surviving with no compression at all (worst of "
                + ", ".join(f"{r.condition} {r.survived_pct:.1f}%" for r in floors)
                + ")"
            ),
        )
    ]
    for row in rows:
        if row.kind in ("Reference", "NoiseFloor") or row.survived_pct is None:
            continue
        high = (row.survived_ci or (None, None))[1]
        if (
            max(row.survived_pct, high if high is not None else row.survived_pct)
            >= worst.survived_pct
        ):
            findings.append(
                Finding(
                    kind=WITHIN_NOISE_FLOOR,
                    condition=row.condition,
                    message=(
                        f"{row.condition}: survival {row.survived_pct:.1f}% is within reach of "
                        f"the noise floor ({worst.condition} {worst.survived_pct:.1f}%): its "
                        "feature damage is not told apart from running the reference another way."
                    ),
                )
            )
    return findings
