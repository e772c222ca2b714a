"""The protocol's retrained-SAE phase (``ProtocolConfig.retrain_tokens``): checked with the
other inputs, run after the feature pass on the condition it names (docs/retrained-sae.md)."""

from __future__ import annotations

from pytest_qdm.analyse.retrain_checks import check_audited, check_budget
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.retrain import RetrainResult


def retrain_target(inputs) -> Condition | None:
    """The condition to retrain on, after every check that needs no forward pass (None:
    no retraining); ValueError in one line otherwise."""
    cfg = inputs.cfg
    if not cfg.retrain_tokens:
        return None
    from pytest_qdm.analyse.retrain import training_classes

    check_budget(cfg.retrain_tokens)
    training_classes(inputs.sae)
    name = cfg.retrain_condition or inputs.focus
    conditions = {c.name: c for c in [*inputs.rtn, *inputs.extra]}
    check_audited(name, conditions)
    return conditions[name]


def retrain_phase(inputs, result: AuditResult) -> RetrainResult | None:
    """Retrain the SAE on the target condition's activations, then compare (analyse/retrain.py)."""
    condition = retrain_target(inputs)
    if condition is None:
        return None
    from pytest_qdm.analyse.retrain import retrain_sae

    cfg, config = inputs.cfg, inputs.config
    return retrain_sae(
        *(inputs.model, inputs.sae, inputs.tokens, condition),
        budget=cfg.retrain_tokens,
        init=cfg.retrain_init,
        seed=cfg.seed,
        audit_result=result,
        config=config,
        progress=config.progress,
    )
