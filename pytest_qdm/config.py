"""Audit settings: one frozen, validated object shared by the engine and the reports."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LENSES = ("token", "transfer")
SAE_PRUNE_METHODS = ("decoder_norm_x_mean", "wanda")
# Deployed schemes the gate can audit beside RTN, by condition name (see schemes.py).
SCHEME_NAME = re.compile(
    r"^(?:nf4-b(?P<block>\d+)|fp8-(?P<fp8>e4m3|e5m2)|(?P<absmax>absmax-int8)"
    r"|rtn-int(?P<bits>\d+)-g(?P<group>\d+))$"
)
SCHEME_EXAMPLES = "nf4, nf4-b128, fp8-e4m3, fp8-e5m2, absmax-int8, int4-g128"


def scheme_name(text: str) -> str:
    """The condition name of a scheme as written on the command line (``nf4`` ->
    ``nf4-b64``, ``int4-g128`` -> ``rtn-int4-g128``); ValueError if it is none."""
    from .thresholds import condition_name

    name = condition_name(text.strip().lower())
    match = SCHEME_NAME.match(name)
    bad_bits = match and match["bits"] and not 2 <= int(match["bits"]) <= 8
    if not match or bad_bits or any(v == "0" for v in match.groupdict().values() if v):
        raise ValueError(f"--qdm-schemes {text!r} is not a scheme; use {SCHEME_EXAMPLES}")
    return name


class AuditConfig(BaseModel):
    """Thresholds and execution settings of an audit (DESIGN.md, "Definitions").

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
            agreement, Procrustes error of the read-out; see ``pytest_qdm.lenses``).
        top_k: k of the top-k agreement.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hook_name: str | None = None
    survival_threshold: float = Field(0.9, gt=-1, le=1)
    damage_threshold: float = Field(0.5, ge=-1, lt=1)
    active_threshold: float = Field(1e-3, ge=0, lt=1)
    batch_size: int = Field(8, ge=1)
    device: str | None = None
    progress: bool = True
    compute_loss: bool = False
    token_lenses: bool = True
    top_k: int = Field(10, ge=1)

    @property
    def lens_k(self) -> int | None:
        """The top-k of the token lenses, or None when they are off."""
        return self.top_k if self.token_lenses else None

    @model_validator(mode="after")
    def _bands_ordered(self) -> AuditConfig:
        if self.damage_threshold > self.survival_threshold:
            raise ValueError(
                f"damage_threshold ({self.damage_threshold}) must not exceed "
                f"survival_threshold ({self.survival_threshold})"
            )
        return self


class QdmOptions(BaseModel):
    """The plugin's options, built once in ``pytest_configure`` (command line over ini).

    ``model`` None means the plugin is idle: no gate item, and qdm fixtures skip.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model: str | None = None
    sae: str | None = None
    hook: str | None = None
    bits: tuple[int, ...] = (8, 7, 6, 5, 4)
    match_bits: int | None = 6
    dataset: str | None = None
    tokens: int | None = Field(None, ge=1)
    context_length: int | None = Field(None, ge=2)
    batch_size: int = Field(8, ge=1)
    device: str | None = None
    dtype: str | None = None
    survival_threshold: float = 0.9
    damage_threshold: float = 0.5
    active_threshold: float = 1e-3
    report_dir: str = "qdm-report"
    gates: tuple[Any, ...] = ()  # thresholds.GateCheck
    baseline: str | None = None
    baseline_checks: tuple[Any, ...] = ()  # thresholds.BaselineCheck
    update_baseline: bool = False
    cache: bool = True
    cache_dir: str = ".qdm/cache"
    plots: bool = True
    progress: bool = True
    lenses: tuple[str, ...] = LENSES
    top_k: int = Field(10, ge=1)
    schemes: tuple[str, ...] = ()  # condition names, see scheme_name()
    sae_prune: tuple[float, ...] = ()
    sae_prune_method: str = SAE_PRUNE_METHODS[0]

    @field_validator("lenses")
    @classmethod
    def _known_lenses(cls, lenses: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(lenses) - set(LENSES))
        if unknown:
            raise ValueError(f"--qdm-lenses: unknown {unknown}; use {','.join(LENSES)} or none")
        return lenses

    @field_validator("sae_prune")
    @classmethod
    def _prune_fractions(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in fractions if not 0 < f < 1]
        if bad:
            raise ValueError(f"--qdm-sae-prune fractions must lie in (0, 1), got {bad}")
        return fractions

    @field_validator("sae_prune_method")
    @classmethod
    def _prune_method(cls, method: str) -> str:
        if method not in SAE_PRUNE_METHODS:
            raise ValueError(
                f"--qdm-sae-prune-method {method!r}: use one of {', '.join(SAE_PRUNE_METHODS)}"
            )
        return method

    @model_validator(mode="after")
    def _valid_bits(self) -> QdmOptions:
        bad = [b for b in self.bits if not 2 <= b <= 8]
        if bad or not self.bits:
            raise ValueError(f"--qdm-bits must list bit widths in 2..8, got {list(self.bits)}")
        if self.match_bits is not None and self.match_bits not in self.bits:
            raise ValueError(
                f"--qdm-match-bits {self.match_bits} is not among --qdm-bits {list(self.bits)}"
            )
        return self

    def audit_config(self, hook: str | None = None) -> AuditConfig:
        return AuditConfig(
            hook_name=hook or self.hook,
            survival_threshold=self.survival_threshold,
            damage_threshold=self.damage_threshold,
            active_threshold=self.active_threshold,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
            token_lenses="token" in self.lenses,
            top_k=self.top_k,
        )
