"""Which blocks to keep at higher precision (docs/definitions.md, "Block sensitivity").

1. Each transformer block up to the read-out is quantized alone at the focus width
   (:class:`~pytest_qdm.compress.mixed.BlockRTN`, the rest at reference precision); all of
   them are audited in ONE pass. Blocks after the read-out cannot change the features at
   the hook: they get a perplexity only and are marked ``above_readout``.
2. A greedy plan starts from every block at the focus width and raises blocks to INT8 in
   order of their solo damage (lowest solo survival first) until the predicted survival
   reaches the target or ``max_raised`` blocks are raised. The prediction is per feature:
   damage 1 - r of the whole model at the focus width, split over the blocks in proportion
   to each block's solo damage (exact at both ends: every block quantized, none).
3. The plan is then audited as one :class:`~pytest_qdm.compress.mixed.MixedRTN`
   condition: the survival and perplexity reported are measured, not predicted. Where the
   measured survival falls short of the target (the prediction ignores how blocks'
   errors interact), the next block is raised and the plan audited again, until the
   target is met or the budget is spent (``n_audits`` counts these passes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from pytest_qdm.analyse.perplexity import chunked_perplexity, relative_change
from pytest_qdm.schema.analyses import BlockSensitivity, SensitivityPlan, SensitivityResult
from pytest_qdm.settings import AuditConfig

if TYPE_CHECKING:  # the configure-time check (check_focus) imports no torch
    import torch

    from pytest_qdm.compress.conditions import Condition
    from pytest_qdm.schema.audit import ConditionResult

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


def plan_target(min_survived, match_bits: int | None, default: float = 0.9) -> float:
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


def block_sensitivity(
    model,
    sae,
    tokens,
    bits: int,
    *,
    config: AuditConfig | None = None,
    focus: ConditionResult | None = None,
    ppl_tokens: torch.Tensor | None = None,
    bos: bool = False,
    known_ppl: Mapping[str, float | None] | None = None,
    target: float = 0.9,
    max_raised: int | None = None,
) -> SensitivityResult:
    """Per-block sensitivity at ``bits`` and a verified mixed-precision plan.

    ``focus``: the audit of ``RTN(bits)`` on the same tokens, when already run (else it
    joins the block pass). ``ppl_tokens`` [n, ctx] (``bos``: column 0 is BOS): chunked
    perplexity of each block setting and of the plan; None measures none.
    ``known_ppl``: chunked perplexities already measured on ``ppl_tokens``, by condition
    name (``reference`` included). ``target``: survival fraction the plan aims for.
    """
    from pytest_qdm.compress.conditions import RTN, applied
    from pytest_qdm.compress.mixed import BlockRTN, MixedRTN
    from pytest_qdm.run.audit import as_token_tensor, audit
    from pytest_qdm.stream.hooks import resolve_hook

    config = config or AuditConfig()
    check_focus(bits, True)
    tokens = as_token_tensor(tokens)
    hook = resolve_hook(model, sae, config)
    # the block pass needs only survival: no token lenses, no drill-down
    quiet = config.model_copy(update={"token_lenses": False, "drilldown_features": 0})
    below = feature_blocks(model, hook)
    singles = {b: BlockRTN(bits, (b,)) for b in range(model.cfg.n_layers)}
    focus_condition = RTN(bits)
    in_pass: list[Condition] = [singles[b] for b in below]
    if focus is None:
        in_pass.append(focus_condition)
    result = audit(model, sae, tokens, in_pass, quiet)
    focus = focus or result.conditions[focus_condition.name]

    measured = dict(known_ppl or {})

    def chunked(weights: dict) -> float | None:
        with applied(model, weights):
            return chunked_perplexity(
                model, ppl_tokens, bos_in_tokens=bos, batch_size=config.batch_size
            ).perplexity

    def ppl_change(condition: Condition) -> float | None:
        if ppl_tokens is None:
            return None
        if "reference" not in measured:
            measured["reference"] = chunked({})
        if condition.name not in measured:
            measured[condition.name] = chunked(condition.compressed_weights(model))
        ppl, ref = measured[condition.name], measured["reference"]
        return None if ppl is None or ref is None else relative_change(ppl, ref)

    rows = []
    for block, condition in singles.items():
        cond = result.conditions.get(condition.name)
        rows.append(
            BlockSensitivity(
                block=block,
                condition=condition.name,
                above_readout=cond is None,
                survived_pct=cond.summary.survived_pct if cond else None,
                mean_correlation=cond.summary.mean_correlation if cond else None,
                ppl_chunked_change=ppl_change(condition),
            )
        )

    feature_rows = [r for r in rows if not r.above_readout]
    order = [
        r.block
        for r in sorted(
            feature_rows,
            key=lambda r: (
                101.0 if r.survived_pct is None else r.survived_pct,
                2.0 if r.mean_correlation is None else r.mean_correlation,
                r.block,
            ),
        )
    ]
    block_r = {b: result.conditions[singles[b].name].correlation for b in below}
    threshold = config.survival_threshold
    raised, predicted = greedy_plan(
        order, focus.correlation, block_r, 100 * target, threshold, max_raised
    )
    budget = len(order) if max_raised is None else min(max_raised, len(order))
    n_audits = 0
    while True:
        if raised:  # verify: the plan audited as one condition
            plan = MixedRTN(dict.fromkeys(raised, RAISED_BITS), default_bits=bits)
            planned = audit(model, sae, tokens, [plan], quiet).conditions[plan.name]
            n_audits += 1
        else:  # every block at the focus width: the focus condition itself, already audited
            plan, planned = focus_condition, focus
        survived = planned.summary.survived_pct
        if (survived is not None and survived >= 100 * target) or len(raised) >= budget:
            break
        # the prediction was optimistic: raise the next block and measure again
        raised.append(order[len(raised)])
        quantized = set(block_r) - set(raised)
        predicted = predicted_survived_pct(focus.correlation, block_r, quantized, threshold)
    return SensitivityResult(
        focus_condition=focus_condition.name,
        focus_bits=bits,
        hook_name=hook,
        last_feature_block=below[-1] if below else -1,
        blocks=rows,
        plan=SensitivityPlan(
            condition=plan.name,
            focus_bits=bits,
            raised_bits=RAISED_BITS,
            raised_blocks=sorted(raised),
            target_survived_pct=100 * target,
            max_raised=max_raised,
            predicted_survived_pct=predicted,
            n_audits=n_audits,
            survived_pct=survived,
            mean_correlation=planned.summary.mean_correlation,
            ppl_chunked_change=ppl_change(plan),
            focus_survived_pct=focus.summary.survived_pct,
            focus_ppl_chunked_change=ppl_change(focus_condition),
            target_met=survived is not None and survived >= 100 * target,
        ),
    )
