"""The protocol report: the JSON contract of one gate run (sweep rows, findings, and every
analysis's typed result). Pydantic only; no torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

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
from pytest_qdm.schema.audit import SCHEMA_VERSION, AuditResult
from pytest_qdm.schema.claims import ClaimsReport
from pytest_qdm.schema.retrain import RetrainResult
from pytest_qdm.settings import ProtocolConfig


class DomainRow(BaseModel):
    """One condition over one labelled domain: bands among the features active in that
    domain, and the chunked perplexity change on its rows."""

    model_config = ConfigDict(frozen=True)

    n_active: int
    survived_pct: float | None
    degraded_pct: float | None
    damaged_pct: float | None
    mean_correlation: float | None
    ppl_chunked: float | None = None
    ppl_chunked_change: float | None = None


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
    # next-token behaviour vs the reference (analyse/behaviour.py; None for the reference)
    kl: float | None = None
    kl_reverse: float | None = None
    top1_agreement: float | None = None
    topk_token_overlap: float | None = None
    top_prob_change: float | None = None
    kl_ci: tuple[float, float] | None = None
    top1_ci: tuple[float, float] | None = None
    domains: dict[str, DomainRow] = {}  # per labelled domain (--qdm-dataset LABEL=SOURCE)


#: Finding kinds, each named once: perplexity barely moves while features are damaged; so do
#: the next-token distributions (KL, top-1); the noise floor itself; a change within it.
MASKS_DAMAGE = "perplexity_masks_damage"
BEHAVIOUR_MASKS = "behaviour_masks_damage"
NOISE_FLOOR = "noise_floor"
WITHIN_NOISE_FLOOR = "within_noise_floor"


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
    sensitivity: SensitivityResult | None = None  # ProtocolConfig.sensitivity
    claims: ClaimsReport | None = None  # --qdm-claims (docs/claims.md)
    retrain: RetrainResult | None = None  # ProtocolConfig.retrain_tokens

    def to_json(self, **kwargs) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ProtocolReport:
        return cls.model_validate_json(text)

    def row(self, condition: str) -> SweepRow:
        return next(r for r in self.sweep if r.condition == condition)
