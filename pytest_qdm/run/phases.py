"""The protocol's phases after perplexity, each a function with typed input and output (see
:mod:`pytest_qdm.run.protocol` for the order they run in): the sharded feature pass, the
second-layer audit, stability, predictor, overlap, SAE pruning and block sensitivity. Inputs:
:mod:`pytest_qdm.run.inputs`; the perplexity phases: :mod:`pytest_qdm.run.perplexity_phase`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pytest_qdm.analyse.overlap import compare_damage
from pytest_qdm.analyse.predictor import fit_survival_predictor
from pytest_qdm.analyse.sae_pruning import sae_pruning_sweep
from pytest_qdm.analyse.stability import (
    bootstrap_survival,
    budget_sensitivity,
    disjoint_subsets,
    merge_all,
    null_check,
    threshold_grid,
)
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.progress import progress_bar
from pytest_qdm.run.audit import audit, finalize, prepare_conditions, token_summary
from pytest_qdm.run.inputs import Inputs
from pytest_qdm.run.perplexity_phase import Perplexities
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.run.sensitivity import block_sensitivity
from pytest_qdm.schema.analyses import (
    OverlapResult,
    PredictorResult,
    SaePruningSweep,
    SensitivityResult,
    StabilityReport,
)
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.stream.distributed import concatenated, local_share
from pytest_qdm.stream.drilldown import Labels
from pytest_qdm.stream.engine import EngineState, pass_steps
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.passes import run_shards


@dataclass(frozen=True)
class FeaturePass:
    shards: list[EngineState]
    result: AuditResult


def feature_phase(
    inputs: Inputs, conditions: list[Condition], store: Checkpoints | None = None
) -> FeaturePass:
    """ONE sharded pass over the audit tokens for every condition; shards merge exactly.
    With ``store``, finished shards are saved as they complete and reused by a rerun."""
    store = store or Checkpoints(None)
    model, config = inputs.model, inputs.audit_config
    # two-phase: each shard prepares one condition's weights at a time (run/audit.py)
    prepared = prepare_conditions(
        model, conditions, inputs.hook, compute_loss=False, lazy=config.two_phase
    )
    # under torch.distributed each rank runs a contiguous share of the shards
    rows = local_share(
        _shards(
            inputs.tokens.shape[0], inputs.protocol_config.n_shards, inputs.protocol_config.seed
        )
    )
    shard_tokens = [inputs.tokens[r] for r in rows]
    domains = [inputs.domains and inputs.domains.take(r) for r in rows]
    steps = sum(
        pass_steps(t, conditions, config, d) for t, d in zip(shard_tokens, domains, strict=True)
    )
    device = torch.device(config.device or model.cfg.device)
    with progress_bar("QDM protocol", steps, config.progress) as advance:
        shards = concatenated(
            lambda: run_shards(
                PassSpec(model, inputs.sae, conditions, prepared, inputs.hook, config),
                shard_tokens,
                advance,
                finished=store.load_shards(),
                keep=store.save_shards,
                domains=domains,
            ),
            device,
        )
    labels = Labels.of(model, inputs.sae)
    summary = token_summary(inputs.tokens, inputs.domains)
    result = finalize(merge_all(shards), conditions, inputs.hook, summary, config, labels)
    return FeaturePass(shards, result)


def second_layer_phase(inputs: Inputs, second_sae) -> AuditResult | None:
    """The same RTN sweep read by an SAE at another layer (a stability check)."""
    if second_sae is None:
        return None
    off = {"hook_name": None, "token_lenses": False, "drilldown_features": 0}
    config = inputs.audit_config.model_copy(update=off)
    return audit(inputs.model, second_sae, inputs.tokens, inputs.rtn, config)


def stability_phase(
    inputs: Inputs, features: FeaturePass, conditions: list[Condition], second: AuditResult | None
) -> StabilityReport:
    """Null, budget, subsets, threshold grid and bootstrap, all from the shard states."""
    cfg, config, shards = inputs.protocol_config, inputs.audit_config, features.shards
    bootstrap = (
        bootstrap_survival(shards, config, cfg.n_bootstrap, cfg.seed, cfg.confidence)
        if cfg.n_bootstrap
        else {}
    )
    return StabilityReport(
        null=null_check(features.result),
        budget=budget_sensitivity(shards, cfg.budget_fractions, config),
        subsets=disjoint_subsets(shards, cfg.n_subsets, config),
        threshold_grid=threshold_grid(features.result, [c.name for c in conditions[1:]]),
        bootstrap=bootstrap,
        second_layer=second,
    )


def predictor_phase(inputs: Inputs, result: AuditResult) -> PredictorResult:
    """Does the reference alone (rarity, mean, max) predict which features fail at focus?"""
    ref = result.reference
    active = ref.active
    survived = (
        result.conditions[inputs.focus].correlation[active] > inputs.audit_config.survival_threshold
    )
    return fit_survival_predictor(
        ref.firing_rate[active], ref.mean_activation[active], ref.max_activation[active], survived
    )


def overlap_phase(inputs: Inputs, result: AuditResult, pruned: str | None) -> OverlapResult | None:
    """Do RTN at focus and the matched pruning damage the same features?"""
    if pruned is None:
        return None
    ref, config = result.reference, inputs.audit_config
    return compare_damage(
        result.conditions[inputs.focus].correlation,
        result.conditions[pruned].correlation,
        ref.active,
        firing_rate=ref.firing_rate,
        survival_threshold=config.survival_threshold,
        damage_threshold=config.damage_threshold,
        labels=(inputs.focus, pruned),
    )


def sae_pruning_phase(inputs: Inputs, result: AuditResult) -> SaePruningSweep | None:
    """SAE pruning without retraining, on the reference and the focus condition."""
    cfg = inputs.protocol_config
    if not cfg.sae_prune_fractions:
        return None
    return sae_pruning_sweep(
        inputs.model,
        inputs.sae,
        inputs.ppl_tokens,
        result.reference,
        cfg.sae_prune_fractions,
        conditions=[c for c in inputs.rtn if c.name == inputs.focus],
        method=cfg.sae_prune_method,
        hook=inputs.hook,
        batch_size=inputs.audit_config.batch_size,
        progress=inputs.audit_config.progress,
    )


def sensitivity_phase(
    inputs: Inputs, result: AuditResult, measured: Perplexities
) -> SensitivityResult | None:
    """One block at a time at the focus width (one pass), then the verified greedy plan."""
    cfg = inputs.protocol_config
    if not cfg.sensitivity:
        return None
    return block_sensitivity(
        *(inputs.model, inputs.sae, inputs.tokens, inputs.match_bits),
        config=inputs.audit_config,
        focus=result.conditions[inputs.focus],
        ppl_tokens=inputs.ppl_tokens,
        bos=inputs.bos,
        known_ppl={name: ppl["chunked"].perplexity for name, ppl in measured.perplexity.items()},
        target=cfg.sensitivity_target,
        max_raised=cfg.sensitivity_max_raised,
    )


def _shards(n_rows: int, n_shards: int, seed: int) -> list[torch.Tensor]:
    """Row indices of ``n_shards`` random disjoint shards, each in row order."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return [idx.sort().values for idx in torch.tensor_split(order, min(n_shards, n_rows))]
