"""Settings of the audit and the protocol: every default exactly once.

:class:`AuditConfig` (thresholds and execution of one feature pass) and
:class:`ProtocolConfig` (the protocol's phases beyond it). Both are frozen and refuse
unknown fields; the plugin's options (:mod:`pytest_qdm.options`) read their defaults here.
Definitions of the bands and metrics: docs/definitions.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LENSES = ("token", "transfer")
SAE_PRUNE_METHODS = ("decoder_norm_x_mean", "wanda")
DEFAULT_BITS = (8, 7, 6, 5, 4)
DEFAULT_MATCH_BITS = 6
#: r above this is *survived* (``AuditConfig.survival_threshold``).
SURVIVAL_THRESHOLD = 0.9
#: The survival fraction a mixed-precision plan aims for (``ProtocolConfig.sensitivity_target``).
SENSITIVITY_TARGET = 0.9


class AuditConfig(BaseModel):
    """Thresholds and execution settings of an audit (docs/definitions.md).

    Attributes:
        hook_name: read-out hook; None uses the SAE's ``cfg.metadata.hook_name``.
        survival_threshold: r above this is *survived*.
        damage_threshold: r below this is *damaged*; in between is *degraded*.
        active_threshold: a feature is active when its reference firing rate exceeds this.
        batch_size: sequences per forward pass; memory is bounded by it.
        device: where the forward passes run; None uses the model's device.
        progress: show a rich progress bar (only drawn on a terminal).
        compute_loss: also accumulate next-token loss (needs the full forward).
        token_lenses: also measure token-level agreement (sample correlation, top-k
            agreement, Procrustes error of the read-out; see ``pytest_qdm.stream.lenses``).
        top_k: k of the top-k agreement.
        drilldown_features: per condition, how many of the most damaged features (lowest
            r) the report drills into; 0 turns the drill-down off.
        drilldown_contexts: top contexts kept per feature and side (reference, compressed);
            0 turns the drill-down off.
        two_phase: for models whose reference and a compressed copy do not fit on the
            device together: first run only the reference and cache its read-out on disk,
            then run one condition at a time against the cache (stream/two_phase.py).
            Identical numbers; more time and disk. Not part of any fingerprint.
        two_phase_dir: the folder under which a two-phase pass makes its cache folder
            (``qdm-reference-*``); None: the system's temporary folder.
        two_phase_keep: keep the cache folder after the pass (by default it is removed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hook_name: str | None = None
    survival_threshold: float = Field(SURVIVAL_THRESHOLD, gt=-1, le=1)
    damage_threshold: float = Field(0.5, ge=-1, lt=1)
    active_threshold: float = Field(1e-3, ge=0, lt=1)
    batch_size: int = Field(8, ge=1)
    device: str | None = None
    progress: bool = True
    compute_loss: bool = False
    token_lenses: bool = True
    top_k: int = Field(10, ge=1)
    drilldown_features: int = Field(20, ge=0)
    drilldown_contexts: int = Field(5, ge=0)
    two_phase: bool = False
    two_phase_dir: str | None = None
    two_phase_keep: bool = False

    @property
    def lens_k(self) -> int | None:
        """The top-k of the token lenses, or None when they are off."""
        return self.top_k if self.token_lenses else None

    @property
    def drilldown(self) -> bool:
        """Whether the pass keeps each feature's top contexts."""
        return self.drilldown_features > 0 and self.drilldown_contexts > 0

    @model_validator(mode="after")
    def _bands_ordered(self) -> AuditConfig:
        if self.damage_threshold > self.survival_threshold:
            raise ValueError(
                f"damage_threshold ({self.damage_threshold}) must not exceed "
                f"survival_threshold ({self.survival_threshold})"
            )
        if not self.two_phase and (self.two_phase_dir is not None or self.two_phase_keep):
            raise ValueError("two_phase_dir and two_phase_keep need two_phase=True")
        return self


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
    confidence: float = Field(
        0.95, gt=0, lt=1, description="level of the bootstrap intervals (survival, KL, top-1)"
    )
    masks_kl_bound: float = Field(
        0.01,
        ge=0,
        description="mean KL(reference || condition) in nats counted as 'behaviour held' "
        "(docs/definitions.md, 'Behaviour masks damage')",
    )
    masks_top1_bound: float = Field(
        0.95, ge=0, le=1, description="top-1 agreement counted as 'behaviour held'"
    )
    sensitivity: bool = Field(
        False,
        description="quantize one block at a time at match_bits, then verify a greedy "
        "mixed-precision plan (docs/definitions.md, 'Block sensitivity')",
    )
    sensitivity_target: float = Field(
        SENSITIVITY_TARGET,
        ge=0,
        le=1,
        description="survival the mixed-precision plan aims for (fraction)",
    )
    sensitivity_max_raised: int | None = Field(
        None, ge=0, description="at most this many blocks raised to INT8 (None: no limit)"
    )
    retrain_tokens: int = Field(
        0,
        ge=0,
        description="retrain the SAE on one condition's activations for this many tokens "
        "(docs/retrained-sae.md; 0: no retrained baseline)",
    )
    retrain_init: Literal["reference", "random"] = "reference"
    retrain_condition: str | None = Field(
        None, description="the audited condition to retrain on (None: the focus condition)"
    )

    @field_validator("sae_prune_method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method not in SAE_PRUNE_METHODS:
            raise ValueError(f"sae_prune_method {method!r}: use one of {SAE_PRUNE_METHODS}")
        return method
