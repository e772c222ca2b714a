"""The retrained-SAE step (docs/retrained-sae.md): :func:`retrain_sae` (audit when needed,
train with :mod:`pytest_qdm.analyse.retrain`, compare), and the protocol's phase
(``ProtocolConfig.retrain_tokens``): checked with the other inputs, run after the feature
pass on the condition it names."""

from __future__ import annotations

import time

import numpy as np

from pytest_qdm.analyse.feature_matching import (
    MATCHINGS,
    MOVED_CORRELATION,
    MOVED_COSINE,
    decoder_cosines,
    lost_or_moved,
    match_features,
)
from pytest_qdm.analyse.retrain import check_retrain, split_rows, train
from pytest_qdm.analyse.retrain_checks import DEFAULT_BATCH_TOKENS, check_audited, check_budget
from pytest_qdm.analyse.retrain_eval import evaluate_three_way
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.run.audit import audit
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.retrain import RetrainResult
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.hooks import resolve_hook


def retrain_target(inputs) -> Condition | None:
    """The condition to retrain on, after every check that needs no forward pass (None:
    no retraining); ValueError in one line otherwise."""
    cfg = inputs.protocol_config
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
    cfg, config = inputs.protocol_config, inputs.audit_config
    return retrain_sae(
        *(inputs.model, inputs.sae, inputs.tokens, condition),
        budget=cfg.retrain_tokens,
        init=cfg.retrain_init,
        seed=cfg.seed,
        audit_result=result,
        config=config,
        progress=config.progress,
    )


def audited(model, sae, tokens, condition: Condition, result, config) -> AuditResult:
    """The audit that holds ``condition`` (``result``, else one run now on ``tokens``)."""
    if result is None:
        off = {"token_lenses": False, "drilldown_features": 0, "progress": False}
        return audit(model, sae, tokens, [condition], config.model_copy(update=off))
    check_audited(condition.name, result.conditions)
    return result


def retrain_sae(
    model,
    sae,
    tokens,
    condition: Condition,
    *,
    budget: int,
    init: str = "reference",
    seed: int = 0,
    eval_tokens=None,
    audit_result: AuditResult | None = None,
    config: AuditConfig | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    lr: float = 3e-4,
    matching: str = "hungarian",
    progress: bool = True,
) -> RetrainResult:
    """Retrain ``sae`` on ``condition``'s activations for ``budget`` tokens and compare
    (module doc). ``tokens``: the training rows (LongTensor [n, ctx] or a TokenSet), of
    which a random quarter is held out for evaluation unless ``eval_tokens`` is given;
    ``audit_result``: an audit that holds the condition (else one runs on ``tokens``).
    The model and ``sae`` are left unchanged; ``result.sae`` is the retrained SAE."""
    started = time.perf_counter()
    config = config or AuditConfig()
    if not isinstance(condition, Condition):
        raise TypeError(f"condition must be a pytest_qdm condition, got {condition!r}")
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    check_retrain(sae, budget, init, batch_tokens)
    hook = resolve_hook(model, sae, config)
    all_rows = getattr(tokens, "tokens", tokens)
    audit_result = audited(model, sae, all_rows, condition, audit_result, config)
    train_rows, eval_rows = split_rows(all_rows, eval_tokens, seed)
    retrained, trained_tokens = train(
        *(model, sae, train_rows, condition, hook),
        **dict(budget=budget, init=init, seed=seed, batch_tokens=batch_tokens, lr=lr),
        progress=progress,
    )
    active = np.flatnonzero(audit_result.reference.active)
    cosines = decoder_cosines(
        sae.W_dec.detach().cpu().numpy()[active], retrained.W_dec.detach().cpu().numpy()
    )
    match = match_features(cosines, matching)
    table, activation_r = evaluate_three_way(
        model, sae, retrained, condition, eval_rows, hook, audit_result.reference, config,
        pairs=(active, match),
    )  # fmt: skip
    features, bands, lost = lost_or_moved(
        active,
        audit_result.conditions[condition.name].correlation[active],
        match,
        cosines[np.arange(len(active)), match],
        activation_r,
        (config.survival_threshold, config.damage_threshold),
    )
    result = RetrainResult(
        condition=condition.name,
        hook_name=hook,
        init=init,
        seed=seed,
        budget_tokens=int(budget),
        trained_tokens=int(trained_tokens),
        train_rows=int(train_rows.shape[0]),
        epochs=trained_tokens / train_rows.numel(),
        eval_tokens=int(eval_rows.numel()),
        batch_size=batch_tokens,
        lr=lr,
        matching=matching,
        min_cosine=MOVED_COSINE,
        min_correlation=MOVED_CORRELATION,
        table=table,
        bands=bands,
        features=features,
        lost=lost,
        elapsed_seconds=time.perf_counter() - started,
    )
    result._sae = retrained
    return result
