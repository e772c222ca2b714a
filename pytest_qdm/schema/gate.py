"""The gate's records: a verdict per check, the fingerprint of a run's inputs, and a saved
baseline (a report with its fingerprint).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from pytest_qdm.schema.protocol import ProtocolReport


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    message: str


class Fingerprint(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    model_sha256: str
    sae: str
    sae_sha256: str
    hook: str
    tokens_sha256: str
    corpus_sha256: str | None
    settings: str  # canonical JSON of the audit and protocol settings
    versions: dict[str, str]

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:24]

    def differences(self, other: Fingerprint) -> list[str]:
        ours, theirs = self.model_dump(), other.model_dump()
        return [
            f"{k}: baseline {theirs[k]!r}, now {ours[k]!r}" for k in ours if ours[k] != theirs[k]
        ]


class Baseline(BaseModel):
    model_config = ConfigDict(frozen=True)

    fingerprint: Fingerprint
    report: ProtocolReport
