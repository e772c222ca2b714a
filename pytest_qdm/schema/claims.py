"""The claims report: per claim and condition, the reference effect, the compressed
model's effect, their ratio, a bootstrap interval and the verdict (docs/claims.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pytest_qdm.schema.base import _Frozen

ClaimStatus = Literal["holds", "fails", "no reference effect"]


class ClaimResult(_Frozen):
    """One claim on one condition.

    ``reference_effect`` / ``effect``: the claim's effect on the reference and on the
    compressed model (nats for steers and ablates, AUROC for detects, accuracy or AUROC for
    probe, Pearson r for survives); ``ratio`` = effect / reference_effect. ``ci`` is the 95%
    bootstrap interval of ``gated`` (the quantity the bound is checked on) and ``gate_end``
    says whether the estimate or an end of that interval met the bound.
    """

    claim: str
    kind: str
    condition: str
    reference_effect: float | None
    reference_ci: tuple[float, float] | None = None
    effect: float | None
    ratio: float | None
    gated: str
    ci: tuple[float, float] | None = None
    bound: str
    gate_end: Literal["estimate", "lower", "upper"] = "estimate"
    status: ClaimStatus
    holds: bool = False  # set from status: "no reference effect" is not a pass
    message: str
    detail: dict[str, float | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _holds_from_status(cls, data):
        if isinstance(data, dict):
            data = {**data, "holds": data.get("status") == "holds"}
        return data

    @property
    def item_name(self) -> str:
        """The pytest item's name: ``<claim-id>[<condition>]``."""
        return f"{self.claim}[{self.condition}]"


class ClaimsReport(_Frozen):
    """Every claim measured on every condition, with the claims as they were given."""

    claims: list[dict] = Field(default_factory=list)
    results: list[ClaimResult] = Field(default_factory=list)

    def result(self, claim: str, condition: str) -> ClaimResult:
        for result in self.results:
            if result.claim == claim and result.condition == condition:
                return result
        raise KeyError(f"no result for claim {claim!r} on condition {condition!r}")

    @property
    def all_hold(self) -> bool:
        return all(r.holds for r in self.results)

    def to_json_dict(self) -> dict:
        """What qdm-report.json's ``claims`` holds."""
        return self.model_dump(mode="json")
