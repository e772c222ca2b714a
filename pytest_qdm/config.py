"""Audit settings: one frozen, validated object shared by the engine and the reports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _bands_ordered(self) -> AuditConfig:
        if self.damage_threshold > self.survival_threshold:
            raise ValueError(
                f"damage_threshold ({self.damage_threshold}) must not exceed "
                f"survival_threshold ({self.survival_threshold})"
            )
        return self
