"""Typed, JSON-round-trippable audit results (schema-versioned).

Per-feature arrays are numpy arrays in Python and lists in JSON, with ``null`` for NaN
(features that are not active have no correlation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pytest_qdm.schema.base import BoolArray, FloatArray, _Frozen
from pytest_qdm.schema.drilldown import FeatureDrilldown
from pytest_qdm.settings import AuditConfig

SCHEMA_VERSION = 1


class CheckpointSpec(_Frozen):
    """Where a candidate's weights came from and how the audit reached them."""

    location: str
    quant_method: str  # bitsandbytes, torchao, compressed-tensors, gguf, none (dense)
    scheme: str
    # "dequantize": the format's library dequantized the weights, swapped into the reference;
    # "forward": the deployed quantized forward, read through a TransformerBridge;
    # "served": a .gguf run by llama.cpp, read through its eval callback
    path: str
    activations_quantized: bool  # the deployed kernel also quantizes activations


class ConditionSpec(_Frozen):
    """What a condition did to the weights."""

    kind: str
    name: str
    bits: int | None = None
    group_size: int | None = None
    axes: str | None = None  # RTN: "reference" = the reference study's code; None per channel
    sparsity: float | None = None
    checkpoint: CheckpointSpec | None = None


class TokenSummary(_Frozen):
    """The shared token set every condition was measured on."""

    n_sequences: int
    context_length: int
    n_tokens: int
    sha256: str
    domains: dict[str, int] = {}  # tokens per labelled domain, in row order


class ReferenceResult(_Frozen):
    """Reference (uncompressed) statistics per feature, over ALL tokens."""

    n_tokens: int
    firing_rate: FloatArray
    mean_activation: FloatArray
    max_activation: FloatArray
    active: BoolArray
    rms_activation: FloatArray | None = None  # sqrt(mean f^2) over ALL tokens

    @property
    def n_active(self) -> int:
        return int(self.active.sum())


class Summary(_Frozen):
    """Bands over the reference-active features (percentages are 0-100)."""

    n_active: int
    survived_count: int
    degraded_count: int
    damaged_count: int
    survived_pct: float | None
    degraded_pct: float | None
    damaged_pct: float | None
    silenced_count: int
    emergent_count: int
    mean_correlation: float | None
    median_correlation: float | None


class TokenAgreement(_Frozen):
    """Token-level agreement of one condition with the reference."""

    sample_correlation: float | None  # mean over tokens of Pearson(x_t, y_t) across features
    n_correlated_tokens: int
    topk_agreement: float | None  # mean |topk(x_t) ∩ topk(y_t)| / k
    k: int
    n_topk_tokens: int  # tokens where the reference has >= k active features
    procrustes_aligned_error: float | None  # min ||A R - B|| / ||B||, R orthogonal
    unaligned_error: float | None  # ||A - B|| / ||B||


class ConditionResult(_Frozen):
    name: str
    spec: ConditionSpec
    correlation: FloatArray  # [d_sae]; NaN where not active in the reference
    silenced: BoolArray
    emergent: BoolArray
    firing_rate: FloatArray  # compressed firing rate
    summary: Summary
    mean_nll: float | None = None  # next-token loss on the audit tokens (compute_loss)
    n_loss_tokens: int | None = None
    agreement: TokenAgreement | None = None  # token lenses (config.token_lenses)
    drilldown: list[FeatureDrilldown] | None = None  # most damaged first (config.drilldown)
    domains: dict[str, Summary] = {}  # bands per labelled domain (its own active features)

    def damage(self) -> np.ndarray:
        """Damage score 1 - r per feature (NaN where not active)."""
        return 1.0 - self.correlation

    def worst_features(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` active features with the lowest r, as (feature id, r)."""
        return lowest_correlations(self.correlation, k)


class AuditResult(_Frozen):
    schema_version: int = SCHEMA_VERSION
    hook_name: str
    d_sae: int
    config: AuditConfig
    tokens: TokenSummary
    reference: ReferenceResult
    reference_mean_nll: float | None = None
    conditions: dict[str, ConditionResult]

    def to_json(self, **kwargs: Any) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> AuditResult:
        return cls.model_validate_json(text)


def lowest_correlations(correlation: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(feature id, r) of the ``k`` lowest finite r (the active features), lowest first."""
    ids = np.flatnonzero(np.isfinite(correlation))
    order = ids[np.argsort(correlation[ids], kind="stable")][:k]
    return [(int(i), float(correlation[i])) for i in order]


def bands(correlation: np.ndarray, active: np.ndarray, config: AuditConfig) -> dict[str, int]:
    """Counts of survived / degraded / damaged among active features (docs/definitions.md, "Bands")."""
    r = correlation[active]
    survived = int((r > config.survival_threshold).sum())
    damaged = int((r < config.damage_threshold).sum())
    return {
        "survived_count": survived,
        "damaged_count": damaged,
        "degraded_count": int(r.size) - survived - damaged,
    }


def summarize(
    correlation: np.ndarray,
    active: np.ndarray,
    silenced: np.ndarray,
    emergent: np.ndarray,
    config: AuditConfig,
) -> Summary:
    n_active = int(active.sum())
    counts = bands(correlation, active, config)

    def pct(count: int) -> float | None:
        return 100.0 * count / n_active if n_active else None

    r = correlation[active]
    return Summary(
        n_active=n_active,
        **counts,
        survived_pct=pct(counts["survived_count"]),
        degraded_pct=pct(counts["degraded_count"]),
        damaged_pct=pct(counts["damaged_count"]),
        silenced_count=int((silenced & active).sum()),
        emergent_count=int(emergent.sum()),
        mean_correlation=float(r.mean()) if n_active else None,
        median_correlation=float(np.median(r)) if n_active else None,
    )
