"""The protocol's phases, each a function with typed input and output (see
:mod:`pytest_qdm.run.protocol` for the order they run in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pytest_qdm.analyse.behaviour import (
    BehaviourSums,
    ReferenceLogits,
    joined,
)
from pytest_qdm.analyse.matched_pruning import match_sparsity
from pytest_qdm.analyse.overlap import compare_damage
from pytest_qdm.analyse.perplexity import (
    chunked_perplexity,
    relative_change,
    sliding_window_perplexity,
)
from pytest_qdm.analyse.predictor import fit_survival_predictor
from pytest_qdm.analyse.sae_fit import ADVICE, check_sae_fit
from pytest_qdm.analyse.sae_pruning import check_prune_fractions, sae_pruning_sweep
from pytest_qdm.analyse.sensitivity import check_focus
from pytest_qdm.analyse.stability import (
    bootstrap_survival,
    budget_sensitivity,
    disjoint_subsets,
    merge_all,
    null_check,
    threshold_grid,
)
from pytest_qdm.analyse.transfer import TransferSums
from pytest_qdm.compress.conditions import RTN, Candidate, Condition, MagnitudePrune, Reference
from pytest_qdm.compress.swap import applied
from pytest_qdm.progress import progress_bar
from pytest_qdm.run.audit import as_token_tensor, audit, finalize, prepare_conditions, token_summary
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.run.sensitivity import block_sensitivity
from pytest_qdm.schema.analyses import (
    OverlapResult,
    PerplexityResult,
    PredictorResult,
    PruningMatch,
    SaeFit,
    SaePruningSweep,
    SensitivityResult,
    StabilityReport,
    TransferQuality,
)
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.behaviour import BehaviourResult
from pytest_qdm.settings import AuditConfig, ProtocolConfig
from pytest_qdm.stream.distributed import concatenated, local_share
from pytest_qdm.stream.domains import RowDomains
from pytest_qdm.stream.drilldown import Labels
from pytest_qdm.stream.engine import EngineState, pass_steps, validate_conditions, validate_inputs
from pytest_qdm.stream.hooks import resolve_hook
from pytest_qdm.stream.passes import run_shards


@dataclass(frozen=True)
class Inputs:
    """What every phase reads: checked once by :func:`check_inputs`."""

    model: object
    sae: object
    tokens: torch.Tensor  # [n, ctx]
    bos: bool  # column 0 is BOS
    hook: str
    rtn: list[RTN]
    extra: list[Condition]
    match_bits: int | None
    focus: str  # the RTN condition the predictor, overlap and SAE pruning are about
    audit_config: AuditConfig
    protocol_config: ProtocolConfig
    domains: RowDomains | None = None  # the rows' labelled domains

    @property
    def _ppl_rows(self) -> torch.Tensor:
        """The perplexity rows: the first ones, or the first of each domain in equal parts."""
        n = max(1, -(-self.protocol_config.ppl_tokens // self.tokens.shape[1]))
        if self.domains is None:
            return torch.arange(min(n, self.tokens.shape[0]))
        per = max(1, -(-n // len(self.domains.names)))
        return torch.cat([self.domains.rows(d)[:per] for d in self.domains.names])

    @property
    def ppl_tokens(self) -> torch.Tensor:
        return self.tokens[self._ppl_rows]

    @property
    def ppl_domains(self) -> RowDomains | None:
        return None if self.domains is None else self.domains.take(self._ppl_rows)


@dataclass
class Perplexities:
    """Perplexity (chunked, sliding) and SAE transfer per condition, on ``ppl_tokens``."""

    perplexity: dict[str, dict[str, PerplexityResult]] = field(default_factory=dict)
    transfer: dict[str, TransferQuality] = field(default_factory=dict)
    behaviour: dict[str, BehaviourResult] = field(default_factory=dict)
    # the reference's logits while conditions are measured (never saved: see release)
    logits: ReferenceLogits | None = None

    def release(self) -> None:
        """Drop the reference's logits (before saving, and when measuring is done)."""
        if self.logits is not None:
            self.logits.close()
            self.logits = None

    @property
    def reference(self) -> dict[str, PerplexityResult]:
        return self.perplexity[Reference().name]


@dataclass(frozen=True)
class FeaturePass:
    shards: list[EngineState]
    result: AuditResult


def focus_condition(rtn: Sequence[RTN], match_bits: int | None) -> str:
    """The RTN condition the predictor and overlap study: the matched width, else the middle."""
    names = [c.name for c in rtn]
    return RTN(match_bits).name if match_bits is not None else names[len(names) // 2]


def check_inputs(
    model, sae, tokens, bits, match_bits, config, cfg, second_sae, extra
) -> tuple[Inputs, SaeFit]:
    """Every check that needs no long work, then the SAE fit (refused below its bound)."""
    bos = bool(getattr(getattr(tokens, "info", None), "prepend_bos", False))
    domains = RowDomains.of_tokens(tokens)
    tokens = as_token_tensor(tokens)
    rtn = [RTN(b) for b in bits]
    if match_bits is not None and match_bits not in bits:
        raise ValueError(f"match_bits={match_bits} must be one of the audited bits {list(bits)}")
    check_focus(match_bits, cfg.sensitivity)
    validate_conditions([Reference(), *rtn, *extra])
    hook = resolve_hook(model, sae, config)
    validate_inputs(model, sae, tokens, hook, config.lens_k)
    for condition in extra:
        if isinstance(condition, Candidate):  # before the perplexity phase runs it
            condition.check_compatible(model, hook)
    if second_sae is not None:
        validate_inputs(
            model, second_sae, tokens[:1], resolve_hook(model, second_sae, AuditConfig())
        )
    check_prune_fractions(sae, cfg.sae_prune_fractions)
    fit = check_sae_fit(
        model, sae, tokens, hook_name=hook, min_explained_variance=cfg.min_explained_variance
    )
    if not fit.ok:
        raise ValueError(
            f"{fit.reason}. {ADVICE} (--qdm-min-explained-variance none, or "
            "ProtocolConfig(min_explained_variance=None), audits anyway)"
        )
    focus = focus_condition(rtn, match_bits)
    inputs = Inputs(
        *(model, sae, tokens, bos, hook, rtn, list(extra), match_bits, focus, config, cfg), domains
    )
    return inputs, fit


def measure(inputs: Inputs, into: Perplexities, name: str, model=None) -> None:
    """Perplexities (and SAE transfer quality) of ``model`` (default: the reference) as it
    currently is."""
    cfg, model = inputs.protocol_config, inputs.model if model is None else model
    served = getattr(model, "served", False)  # llama.cpp: its activations cannot be replaced
    sums = TransferSums(model, inputs.sae, inputs.hook) if cfg.sae_transfer and not served else None
    behaviour = None
    if into.logits is not None:  # the reference records its logits, conditions compare
        behaviour = BehaviourSums(into.logits, record=name == Reference().name)
    into.perplexity[name] = _perplexities(
        model,
        inputs.ppl_tokens,
        inputs.bos,
        cfg,
        inputs.audit_config.batch_size,
        joined(sums, behaviour),
        inputs.ppl_domains,
    )
    if sums is not None:
        into.transfer[name] = sums.result()
    if behaviour is not None and not behaviour.record:
        into.behaviour[name] = behaviour.result(cfg.confidence, seed=cfg.seed)


def progress_plan(inputs: Inputs, second_sae, perplexity: bool = True) -> dict[str, float]:
    """Each progress phase's expected cost: tokens forwarded times its cost per token
    (``progress.PHASE_COST``); the pruning search is counted at half its longest bisection."""
    from pytest_qdm.progress import PHASE_COST

    audit_tokens, n_rtn = inputs.tokens.numel(), len(inputs.rtn)
    pruned = inputs.match_bits is not None
    n_ppl = 1 + n_rtn + len(inputs.extra) + (search_steps(inputs) // 2 if pruned else 0)
    forwarded = {
        "QDM perplexity": n_ppl * inputs.ppl_tokens.numel() if perplexity else 0,
        "QDM protocol": (1 + n_rtn + len(inputs.extra) + pruned) * audit_tokens,
        "QDM audit": (1 + n_rtn) * audit_tokens if second_sae is not None else 0,
    }
    return {phase: n * PHASE_COST[phase] for phase, n in forwarded.items()}


def search_steps(inputs: Inputs) -> int:
    """Progress steps of the pruning match: both bracket ends, the midpoints, the final run."""
    return 0 if inputs.match_bits is None else inputs.protocol_config.prune_search_steps + 3


def perplexity_phase(inputs: Inputs, tick) -> Perplexities:
    """The reference and every RTN / extra condition on the perplexity tokens."""
    measured = Perplexities(logits=ReferenceLogits())
    measure(inputs, measured, Reference().name)
    tick()
    for condition in [*inputs.rtn, *inputs.extra]:
        weights = condition.compressed_weights(inputs.model)
        with condition.running(inputs.model, weights) as model:
            measure(inputs, measured, condition.name, model)
        tick()
    return measured


def pruning_phase(inputs: Inputs, measured: Perplexities, tick) -> PruningMatch | None:
    """Magnitude pruning at the perplexity of RTN at ``match_bits`` (bisection), measured."""
    if inputs.match_bits is None:
        return None
    model, cfg, ppl_tokens = inputs.model, inputs.protocol_config, inputs.ppl_tokens

    def ppl_at(sparsity: float) -> float:
        with applied(model, MagnitudePrune(sparsity).compressed_weights(model)):
            result = chunked_perplexity(
                model,
                ppl_tokens,
                bos_in_tokens=inputs.bos,
                batch_size=inputs.audit_config.batch_size,
            )
        tick()
        return result.perplexity

    target = measured.perplexity[RTN(inputs.match_bits).name]["chunked"].perplexity
    # A match must be closer than the change it matches, or sparsity 0 would "match" any
    # RTN width whose perplexity moved by less than the tolerance.
    change = abs(relative_change(target, measured.reference["chunked"].perplexity))
    pruning = match_sparsity(
        ppl_at,
        target,
        high=cfg.prune_high,
        max_steps=cfg.prune_search_steps,
        rel_tolerance=min(cfg.prune_rel_tolerance, change / 10),
        tokens_used=int(ppl_tokens.numel()),
    )
    prune = MagnitudePrune(pruning.sparsity)
    with applied(model, prune.compressed_weights(model)):
        measure(inputs, measured, prune.name)
    tick()
    return pruning


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
                *(model, inputs.sae, shard_tokens, conditions, prepared, inputs.hook, config),
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


def _perplexities(
    model,
    ppl_tokens: torch.Tensor,
    bos: bool,
    cfg: ProtocolConfig,
    batch: int,
    observer=None,
    domains: RowDomains | None = None,
):
    """Chunked and sliding-window perplexity of the model as it currently is
    (``observer`` rides on the chunked forwards; ``domains``: chunked per domain too)."""
    ctx = ppl_tokens.shape[1]
    stream = (ppl_tokens[:, 1:] if bos else ppl_tokens).reshape(-1)
    bos_id = int(ppl_tokens[0, 0]) if bos else None
    stride = max(1, int(ctx * cfg.sliding_stride_fraction))
    return {
        "chunked": chunked_perplexity(
            *(model, ppl_tokens),
            bos_in_tokens=bos,
            batch_size=batch,
            observer=observer,
            domains=domains,
        ),
        "sliding": sliding_window_perplexity(
            model, stream, window=ctx, stride=stride, bos_token_id=bos_id, batch_size=batch
        ),
    }


def _shards(n_rows: int, n_shards: int, seed: int) -> list[torch.Tensor]:
    """Row indices of ``n_shards`` random disjoint shards, each in row order."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return [idx.sort().values for idx in torch.tensor_split(order, min(n_shards, n_rows))]
