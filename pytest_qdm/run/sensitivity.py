"""Block sensitivity, run: every block alone at the focus width in one audit pass, the
greedy plan of :mod:`pytest_qdm.analyse.sensitivity`, then the plan audited until it meets
its target (docs/definitions.md, "Block sensitivity")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_qdm.analyse.perplexity import chunked_perplexity, relative_change
from pytest_qdm.analyse.sensitivity import (
    RAISED_BITS,
    check_focus,
    feature_blocks,
    greedy_plan,
    predicted_survived_pct,
)
from pytest_qdm.compress.conditions import RTN, Condition
from pytest_qdm.compress.mixed import BlockRTN, MixedRTN
from pytest_qdm.compress.swap import applied
from pytest_qdm.run.audit import as_token_tensor, audit
from pytest_qdm.schema.analyses import BlockSensitivity, SensitivityPlan, SensitivityResult
from pytest_qdm.settings import SENSITIVITY_TARGET, AuditConfig
from pytest_qdm.stream.hooks import resolve_hook

if TYPE_CHECKING:
    import torch

    from pytest_qdm.schema.audit import AuditResult, ConditionResult


class _Perplexities:
    """Relative chunked-perplexity changes on ``tokens`` (None: none measured), each
    condition measured once; ``known`` holds values already measured, by condition name."""

    def __init__(self, model, tokens, bos: bool, batch_size: int, known) -> None:
        self.model, self.tokens, self.bos, self.batch_size = model, tokens, bos, batch_size
        self.measured = dict(known or {})

    def _chunked(self, weights: dict) -> float | None:
        with applied(self.model, weights):
            return chunked_perplexity(
                self.model, self.tokens, bos_in_tokens=self.bos, batch_size=self.batch_size
            ).perplexity

    def change(self, condition: Condition) -> float | None:
        if self.tokens is None:
            return None
        if "reference" not in self.measured:
            self.measured["reference"] = self._chunked({})
        if condition.name not in self.measured:
            self.measured[condition.name] = self._chunked(condition.compressed_weights(self.model))
        ppl, ref = self.measured[condition.name], self.measured["reference"]
        return None if ppl is None or ref is None else relative_change(ppl, ref)


def _block_rows(result: AuditResult, singles, ppl: _Perplexities) -> list[BlockSensitivity]:
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
                ppl_chunked_change=ppl.change(condition),
            )
        )
    return rows


def _solo_order(rows: list[BlockSensitivity]) -> list[int]:
    """Blocks below the read-out, most damaging alone first."""
    feature_rows = [r for r in rows if not r.above_readout]
    key = lambda r: (  # noqa: E731
        101.0 if r.survived_pct is None else r.survived_pct,
        2.0 if r.mean_correlation is None else r.mean_correlation,
        r.block,
    )
    return [r.block for r in sorted(feature_rows, key=key)]


def _verified(audited_plan, order, raised, predicted, budget, target_pct, predict):
    """Audit the plan (``raised`` blocks at INT8); while it falls short of ``target_pct``
    (the prediction ignores how blocks' errors interact), raise the next block in ``order``
    and audit again, up to ``budget`` blocks: (plan, its audit, prediction, audits run)."""
    n_audits = 0
    while True:
        plan, planned = audited_plan(raised)
        n_audits += bool(raised)
        survived = planned.summary.survived_pct
        if (survived is not None and survived >= target_pct) or len(raised) >= budget:
            return plan, planned, predicted, n_audits
        raised.append(order[len(raised)])
        predicted = predict(raised)


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
    target: float = SENSITIVITY_TARGET,
    max_raised: int | None = None,
) -> SensitivityResult:
    """Per-block sensitivity at ``bits`` and a verified mixed-precision plan.

    ``focus``: the audit of ``RTN(bits)`` on the same tokens, when already run (else it
    joins the block pass). ``ppl_tokens`` [n, ctx] (``bos``: column 0 is BOS): chunked
    perplexity of each block setting and of the plan; None measures none.
    ``known_ppl``: chunked perplexities already measured on ``ppl_tokens``, by condition
    name (``reference`` included). ``target``: survival fraction the plan aims for.
    """
    config = config or AuditConfig()
    check_focus(bits, True)
    tokens = as_token_tensor(tokens)
    hook = resolve_hook(model, sae, config)
    # the block pass needs only survival: no token lenses, no drill-down
    quiet = config.model_copy(update={"token_lenses": False, "drilldown_features": 0})
    below = feature_blocks(model, hook)
    singles = {b: BlockRTN(bits, (b,)) for b in range(model.cfg.n_layers)}
    focus_condition = RTN(bits)
    in_pass: list[Condition] = [singles[b] for b in below] + [focus_condition] * (focus is None)
    result = audit(model, sae, tokens, in_pass, quiet)
    focus = focus or result.conditions[focus_condition.name]
    ppl = _Perplexities(model, ppl_tokens, bos, config.batch_size, known_ppl)
    rows = _block_rows(result, singles, ppl)
    order = _solo_order(rows)
    block_r = {b: result.conditions[singles[b].name].correlation for b in below}
    threshold = config.survival_threshold
    raised, predicted = greedy_plan(
        order, focus.correlation, block_r, 100 * target, threshold, max_raised
    )
    budget = len(order) if max_raised is None else min(max_raised, len(order))

    def audited_plan(raised: list[int]):
        if not raised:  # every block at the focus width: the focus condition, already audited
            return focus_condition, focus
        plan = MixedRTN(dict.fromkeys(raised, RAISED_BITS), default_bits=bits)
        return plan, audit(model, sae, tokens, [plan], quiet).conditions[plan.name]

    def predict(up: list[int]) -> float | None:
        return predicted_survived_pct(focus.correlation, block_r, set(block_r) - set(up), threshold)

    plan, planned, predicted, n_audits = _verified(
        audited_plan, order, raised, predicted, budget, 100 * target, predict
    )
    survived = planned.summary.survived_pct
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
            ppl_chunked_change=ppl.change(plan),
            focus_survived_pct=focus.summary.survived_pct,
            focus_ppl_chunked_change=ppl.change(focus_condition),
            target_met=survived is not None and survived >= 100 * target,
        ),
    )
