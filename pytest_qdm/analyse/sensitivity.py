"""Which blocks to keep at higher precision (docs/definitions.md, "Block sensitivity"): the
checks, the prediction and the greedy plan; :mod:`pytest_qdm.run.sensitivity` runs them.

1. Each block up to the read-out is quantized alone at the focus width (``BlockRTN``); all
   of them are audited in ONE pass. Blocks after the read-out cannot change the features at
   the hook: they get a perplexity only and are marked ``above_readout``.
2. A greedy plan starts from every block at the focus width and raises blocks to INT8 in
   order of their solo damage (lowest solo survival first) until the predicted survival
   reaches the target or ``max_raised`` blocks are raised. The prediction is per feature:
   damage 1 - r of the whole model at the focus width, split over the blocks in proportion
   to each block's solo damage (exact at both ends: every block quantized, none).
3. The plan is audited as one ``MixedRTN`` condition: survival and perplexity are measured,
   not predicted. Where it falls short of the target, the next block is raised and the plan
   audited again, until the target is met or the budget is spent (``n_audits``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pytest_qdm.settings import SENSITIVITY_TARGET

RAISED_BITS = 8


def check_focus(match_bits: int | None, sensitivity: bool) -> None:
    """Refuse block sensitivity without a focus width below INT8 (one line)."""
    if not sensitivity:
        return
    if match_bits is None:
        raise ValueError(
            "--qdm-sensitivity needs a focus width: give --qdm-match-bits B (B < 8), "
            "not 0 (ProtocolConfig.sensitivity needs match_bits)"
        )
    if match_bits >= RAISED_BITS:
        raise ValueError(
            f"--qdm-sensitivity: the focus width --qdm-match-bits {match_bits} leaves no "
            f"higher precision to keep blocks at (INT{RAISED_BITS}); use a width below 8"
        )


def plan_target(min_survived, match_bits: int | None, default: float = SENSITIVITY_TARGET) -> float:
    """The plan's survival target (a fraction): the ``--qdm-min-survived`` bound for the
    focus width (``intB`` or ``*``; the strictest if several), else ``default``."""
    if match_bits is None:
        return default
    names = {f"rtn-int{match_bits}", "*"}
    bounds = [c.bound / 100 for c in min_survived if c.condition in names]
    return max(bounds) if bounds else default


def feature_blocks(model, hook: str) -> range:
    """The blocks whose weights can change the activations at ``hook``."""
    from pytest_qdm.stream.hooks import stop_layer

    stop = stop_layer(hook)
    n_layers = model.cfg.n_layers
    return range(n_layers if stop is None else min(stop, n_layers))


def predicted_survived_pct(
    focus_r: np.ndarray,
    block_r: Mapping[int, np.ndarray],
    quantized: set[int],
    threshold: float,
) -> float | None:
    """Survival % over active features (``focus_r`` not NaN) with only the blocks in
    ``quantized`` at the focus width: each feature's damage 1 - r at the focus width,
    times the share of its summed solo damage that those blocks carry (evenly split where
    no block alone damages it)."""
    active = ~np.isnan(focus_r)
    if not active.any():
        return None
    damage = 1 - focus_r[active]
    solo = {b: np.clip(1 - np.nan_to_num(r[active], nan=1.0), 0, None) for b, r in block_r.items()}
    total = sum(solo.values(), np.zeros_like(damage))
    mine = sum((solo[b] for b in quantized if b in solo), np.zeros_like(damage))
    even = len(quantized & set(solo)) / max(len(solo), 1)
    share = np.where(total > 0, mine / np.where(total > 0, total, 1), even)
    return float(100 * np.mean(1 - damage * share > threshold))


def greedy_plan(
    order: list[int],
    focus_r: np.ndarray,
    block_r: Mapping[int, np.ndarray],
    target_pct: float,
    threshold: float,
    max_raised: int | None,
) -> tuple[list[int], float | None]:
    """Blocks raised (in ``order``) until the predicted survival reaches ``target_pct``."""
    raised: list[int] = []
    quantized = set(block_r)
    predicted = predicted_survived_pct(focus_r, block_r, quantized, threshold)
    budget = len(order) if max_raised is None else min(max_raised, len(order))
    while (predicted is None or predicted < target_pct) and len(raised) < budget:
        block = order[len(raised)]
        raised.append(block)
        quantized.discard(block)
        predicted = predicted_survived_pct(focus_r, block_r, quantized, threshold)
    return raised, predicted
