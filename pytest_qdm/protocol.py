"""The full QDM protocol: sweep, perplexity, predictor, matched pruning, stability.

Order of work: perplexity of the reference and every RTN condition on a fixed token set;
the pruning search on that same set; then ONE sharded feature pass over the audit tokens
for the reference null, every RTN condition and the matched pruning; everything else is
derived from the shard states (see :mod:`pytest_qdm.stability`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .auditing import (
    DEFAULT_BITS,
    as_token_tensor,
    finalize,
    prepare_conditions,
    token_summary,
)
from .compress import RTN, Condition, MagnitudePrune, Reference, applied
from .config import SAE_PRUNE_METHODS, AuditConfig
from .engine import pass_steps, resolve_hook, run_pass, validate_conditions, validate_inputs
from .perplexity import (
    PerplexityResult,
    chunked_perplexity,
    relative_change,
    sliding_window_perplexity,
)
from .precheck import ADVICE, SaeFit, check_sae_fit
from .predictor import PredictorResult, fit_survival_predictor
from .progress import progress_bar
from .pruning import OverlapResult, PruningMatch, compare_damage, match_sparsity
from .results import SCHEMA_VERSION, AuditResult
from .sae_pruning import SaePruningSweep, check_prune_fractions, sae_pruning_sweep
from .stability import (
    StabilityReport,
    bootstrap_survival,
    budget_sensitivity,
    disjoint_subsets,
    merge_all,
    null_check,
    threshold_grid,
)
from .transfer import TransferQuality, TransferSums


class ProtocolConfig(BaseModel):
    """Settings of :func:`run_protocol` beyond the audit's own (``AuditConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ppl_tokens: int = Field(
        16_384, ge=2, description="tokens for perplexity and the pruning search"
    )
    sliding_stride_fraction: float = Field(0.5, gt=0, le=1)
    prune_search_steps: int = Field(12, ge=1)
    prune_rel_tolerance: float = Field(
        0.005,
        gt=0,
        description="|PPL / target - 1| that ends the search (at most a tenth "
        "of the RTN perplexity change being matched)",
    )
    prune_high: float = Field(0.9, gt=0, lt=1)
    n_shards: int = Field(20, ge=1)
    n_subsets: int = Field(4, ge=1)
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    n_bootstrap: int = Field(200, ge=0)
    sae_transfer: bool = Field(True, description="SAE explained variance and spliced loss")
    sae_prune_fractions: tuple[float, ...] = Field(
        (),
        description="SAE pruning sweep on the perplexity tokens, on the reference and the "
        "predictor's RTN condition: fractions of features removed (empty: no sweep)",
    )
    sae_prune_method: str = Field(SAE_PRUNE_METHODS[0], description=f"one of {SAE_PRUNE_METHODS}")
    seed: int = 0
    min_explained_variance: float | None = Field(
        0.5, le=1, description="refuse an SAE that explains less at the hook (None: measure only)"
    )
    masks_ppl_tolerance: float = Field(0.05, ge=0, description="|PPL change| counted as 'held'")
    masks_survival_bound: float = Field(
        0.9, ge=0, le=1, description="survival below this is damage"
    )

    @field_validator("sae_prune_method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in SAE_PRUNE_METHODS:
            raise ValueError(f"sae_prune_method {method!r}: use one of {SAE_PRUNE_METHODS}")
        return method


class SweepRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    condition: str
    kind: str
    bits: int | None
    sparsity: float | None
    ppl_chunked: float | None
    ppl_chunked_change: float | None
    ppl_sliding: float | None
    ppl_sliding_change: float | None
    mean_correlation: float | None
    median_correlation: float | None
    survived_pct: float | None
    degraded_pct: float | None
    damaged_pct: float | None
    silenced_count: int
    emergent_count: int
    sae_explained_variance: float | None = None
    sae_loss_recovered: float | None = None
    sample_correlation: float | None = None  # token lenses (AuditConfig.token_lenses)
    topk_agreement: float | None = None
    procrustes_error: float | None = None
    unaligned_error: float | None = None
    survived_ci: tuple[float | None, float | None] | None


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    condition: str
    message: str


class ProtocolReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    config: ProtocolConfig
    match_bits: int | None
    audit: AuditResult
    reference_perplexity: dict[str, PerplexityResult]
    perplexity: dict[str, dict[str, PerplexityResult]]
    transfer: dict[str, TransferQuality]
    sweep: list[SweepRow]
    predictor: PredictorResult
    predictor_condition: str  # the RTN condition the predictor and the overlap are about
    pruning: PruningMatch | None
    overlap: OverlapResult | None
    stability: StabilityReport
    findings: list[Finding]
    sae_fit: SaeFit
    elapsed_seconds: float
    sae_pruning: SaePruningSweep | None = None  # ProtocolConfig.sae_prune_fractions

    def to_json(self, **kwargs) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ProtocolReport:
        return cls.model_validate_json(text)

    def row(self, condition: str) -> SweepRow:
        return next(r for r in self.sweep if r.condition == condition)


def _perplexities(
    model, ppl_tokens: torch.Tensor, bos: bool, cfg: ProtocolConfig, batch: int, observer=None
):
    """Chunked and sliding-window perplexity of the model as it currently is
    (``observer`` rides on the chunked forwards)."""
    ctx = ppl_tokens.shape[1]
    stream = (ppl_tokens[:, 1:] if bos else ppl_tokens).reshape(-1)
    bos_id = int(ppl_tokens[0, 0]) if bos else None
    stride = max(1, int(ctx * cfg.sliding_stride_fraction))
    return {
        "chunked": chunked_perplexity(
            model, ppl_tokens, bos_in_tokens=bos, batch_size=batch, observer=observer
        ),
        "sliding": sliding_window_perplexity(
            model, stream, window=ctx, stride=stride, bos_token_id=bos_id, batch_size=batch
        ),
    }


def _shards(tokens: torch.Tensor, n_shards: int, seed: int) -> list[torch.Tensor]:
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))
    return [
        tokens[idx.sort().values]
        for idx in torch.tensor_split(order, min(n_shards, tokens.shape[0]))
    ]


def _findings(report_rows: list[SweepRow], cfg: ProtocolConfig) -> list[Finding]:
    """The study's central result, stated per condition: perplexity held, features did not."""
    findings = []
    for row in report_rows:
        change, survived = row.ppl_chunked_change, row.survived_pct
        if change is None or survived is None or row.kind == "Reference":
            continue
        if change <= cfg.masks_ppl_tolerance and survived < 100 * cfg.masks_survival_bound:
            verb = "improved" if change < 0 else "rose only"
            findings.append(
                Finding(
                    kind="perplexity_masks_damage",
                    condition=row.condition,
                    message=(
                        f"{row.condition}: perplexity {verb} {change:+.2%} while only "
                        f"{survived:.1f}% of active SAE features survived "
                        f"({row.degraded_pct:.1f}% degraded, {row.damaged_pct:.1f}% damaged): "
                        "perplexity masks feature damage."
                    ),
                )
            )
    return findings


def _row(name, cond, ppl, ref_ppl, ci, quality) -> SweepRow:
    s, agreement = cond.summary, cond.agreement
    chunked, sliding = (ppl.get(k) for k in ("chunked", "sliding"))

    def change(result, key):
        return relative_change(result.perplexity, ref_ppl[key].perplexity) if result else None

    return SweepRow(
        condition=name,
        kind=cond.spec.kind,
        bits=cond.spec.bits,
        sparsity=cond.spec.sparsity,
        ppl_chunked=chunked.perplexity if chunked else None,
        ppl_chunked_change=change(chunked, "chunked"),
        ppl_sliding=sliding.perplexity if sliding else None,
        ppl_sliding_change=change(sliding, "sliding"),
        mean_correlation=s.mean_correlation,
        median_correlation=s.median_correlation,
        survived_pct=s.survived_pct,
        degraded_pct=s.degraded_pct,
        damaged_pct=s.damaged_pct,
        silenced_count=s.silenced_count,
        emergent_count=s.emergent_count,
        sae_explained_variance=quality.explained_variance if quality else None,
        sae_loss_recovered=quality.loss_recovered if quality else None,
        sample_correlation=agreement.sample_correlation if agreement else None,
        topk_agreement=agreement.topk_agreement if agreement else None,
        procrustes_error=agreement.procrustes_aligned_error if agreement else None,
        unaligned_error=agreement.unaligned_error if agreement else None,
        survived_ci=(ci.low, ci.high) if ci else None,
    )


def run_protocol(
    model,
    sae,
    tokens,
    bits: Sequence[int] = DEFAULT_BITS,
    match_bits: int | None = 6,
    *,
    config: AuditConfig | None = None,
    protocol: ProtocolConfig | None = None,
    second_sae=None,
    extra_conditions: Sequence[Condition] = (),
) -> ProtocolReport:
    """Run the full protocol. ``match_bits=None`` skips the pruning comparison.

    ``tokens`` is a LongTensor [n, ctx] or a TokenSet (whose BOS policy is then known;
    for a bare tensor column 0 is taken as a corpus token, not BOS).
    """
    started = time.perf_counter()
    config, cfg = config or AuditConfig(), protocol or ProtocolConfig()
    bos = bool(getattr(getattr(tokens, "info", None), "prepend_bos", False))
    tokens = as_token_tensor(tokens)
    rtn = [RTN(b) for b in bits]
    if match_bits is not None and match_bits not in bits:
        raise ValueError(f"match_bits={match_bits} must be one of the audited bits {list(bits)}")
    validate_conditions([Reference(), *rtn, *extra_conditions])
    hook = resolve_hook(model, sae, config)
    validate_inputs(model, sae, tokens, hook, config.lens_k)
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
            f"{fit.reason}. {ADVICE} (ProtocolConfig(min_explained_variance=None) audits anyway)"
        )

    ppl_tokens = tokens[: max(1, -(-cfg.ppl_tokens // tokens.shape[1]))]
    batch = config.batch_size
    perplexity: dict[str, dict[str, PerplexityResult]] = {}
    transfer: dict[str, TransferQuality] = {}

    def measure(name: str) -> None:
        """Perplexities (and SAE transfer quality) of the model as it currently is."""
        sums = TransferSums(model, sae, hook) if cfg.sae_transfer else None
        perplexity[name] = _perplexities(model, ppl_tokens, bos, cfg, batch, sums)
        if sums is not None:
            transfer[name] = sums.result()

    # both bracket ends, the midpoints and the final run of the matched pruning
    n_search = 0 if match_bits is None else cfg.prune_search_steps + 3
    n_measured = 1 + len(rtn) + len(extra_conditions)
    pruning = None
    conditions: list[Condition] = [Reference(), *rtn, *extra_conditions]
    with progress_bar("QDM perplexity", n_measured + n_search, config.progress) as tick:
        measure(Reference().name)
        tick()
        ref_ppl = perplexity[Reference().name]
        for condition in [*rtn, *extra_conditions]:
            with applied(model, condition.compressed_weights(model)):
                measure(condition.name)
            tick()

        if match_bits is not None:

            def ppl_at(sparsity: float) -> float:
                with applied(model, MagnitudePrune(sparsity).compressed_weights(model)):
                    result = chunked_perplexity(
                        model, ppl_tokens, bos_in_tokens=bos, batch_size=batch
                    )
                tick()
                return result.perplexity

            target = perplexity[RTN(match_bits).name]["chunked"].perplexity
            # A match must be closer than the change it matches, or sparsity 0 would "match"
            # any RTN width whose perplexity moved by less than the tolerance.
            change = abs(relative_change(target, ref_ppl["chunked"].perplexity))
            pruning = match_sparsity(
                ppl_at,
                target,
                high=cfg.prune_high,
                max_steps=cfg.prune_search_steps,
                rel_tolerance=min(cfg.prune_rel_tolerance, change / 10),
                tokens_used=int(ppl_tokens.numel()),
            )
            prune = MagnitudePrune(pruning.sparsity)
            conditions.append(prune)
            with applied(model, prune.compressed_weights(model)):
                measure(prune.name)
            tick()

    prepared = prepare_conditions(model, conditions, hook, compute_loss=False)
    shard_tokens = _shards(tokens, cfg.n_shards, cfg.seed)
    steps = sum(pass_steps(t, conditions, config) for t in shard_tokens)
    with progress_bar("QDM protocol", steps, config.progress) as advance:
        shards = [
            run_pass(model, sae, t, conditions, prepared, hook, config, advance)
            for t in shard_tokens
        ]
    result = finalize(merge_all(shards), conditions, hook, token_summary(tokens), config)

    ci = bootstrap_survival(shards, config, cfg.n_bootstrap, cfg.seed) if cfg.n_bootstrap else {}
    rtn_names = [c.name for c in rtn]
    second = None
    if second_sae is not None:
        from .auditing import audit

        second = audit(
            model,
            second_sae,
            tokens,
            rtn,
            config.model_copy(update={"hook_name": None, "token_lenses": False}),
        )
    stability = StabilityReport(
        null=null_check(result),
        budget=budget_sensitivity(shards, cfg.budget_fractions, config),
        subsets=disjoint_subsets(shards, cfg.n_subsets, config),
        threshold_grid=threshold_grid(result, [c.name for c in conditions[1:]]),
        bootstrap=ci,
        second_layer=second,
    )

    ref = result.reference
    active = ref.active
    focus = RTN(match_bits).name if match_bits is not None else rtn_names[len(rtn_names) // 2]
    survived = result.conditions[focus].correlation[active] > config.survival_threshold
    predictor = fit_survival_predictor(
        ref.firing_rate[active], ref.mean_activation[active], ref.max_activation[active], survived
    )
    sae_pruning = None
    if cfg.sae_prune_fractions:
        sae_pruning = sae_pruning_sweep(
            model,
            sae,
            ppl_tokens,
            ref,
            cfg.sae_prune_fractions,
            conditions=[c for c in rtn if c.name == focus],
            method=cfg.sae_prune_method,
            hook=hook,
            batch_size=batch,
            progress=config.progress,
        )
    overlap = None
    if pruning is not None:
        overlap = compare_damage(
            result.conditions[focus].correlation,
            result.conditions[conditions[-1].name].correlation,
            active,
            firing_rate=ref.firing_rate,
            survival_threshold=config.survival_threshold,
            damage_threshold=config.damage_threshold,
            labels=(focus, conditions[-1].name),
        )
    rows = [
        _row(
            c.name,
            result.conditions[c.name],
            perplexity.get(c.name, {}),
            ref_ppl,
            ci.get(c.name),
            transfer.get(c.name),
        )
        for c in conditions
    ]
    return ProtocolReport(
        config=cfg,
        match_bits=match_bits,
        audit=result,
        reference_perplexity=ref_ppl,
        perplexity=perplexity,
        transfer=transfer,
        sweep=rows,
        predictor=predictor,
        predictor_condition=focus,
        pruning=pruning,
        overlap=overlap,
        stability=stability,
        findings=_findings(rows, cfg),
        sae_fit=fit,
        elapsed_seconds=time.perf_counter() - started,
        sae_pruning=sae_pruning,
    )
