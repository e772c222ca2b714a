"""The claim kinds by name (one module each), and building a claim from plain data with
one-line errors that name the closest valid kind or field."""

from __future__ import annotations

import difflib

from pydantic import ValidationError

from pytest_qdm.claims.ablates import Ablates
from pytest_qdm.claims.base import Claim
from pytest_qdm.claims.detects import Detects
from pytest_qdm.claims.probe import Probe
from pytest_qdm.claims.steers import Steers
from pytest_qdm.claims.survives import Survives

KINDS: dict[str, type[Claim]] = {
    cls.kind: cls for cls in (Survives, Detects, Steers, Ablates, Probe)
}


def closest(name: str, valid) -> str:
    """ ", did you mean 'x'?" for the closest valid name, or ""."""
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def claim_from_dict(data: dict, where: str = "claim") -> Claim:
    """A typed claim from ``{"id": ..., "kind": ..., ...}`` (ValueError, one line)."""
    data = dict(data)
    kind = data.pop("kind", None)
    name = f"{where} {data.get('id', '?')!r}"
    if kind not in KINDS:
        raise ValueError(
            f"{name}: unknown kind {kind!r}, expected one of {sorted(KINDS)}"
            + closest(str(kind), KINDS)
        )
    cls = KINDS[kind]
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ValueError(
            f"{name} ({kind}): unknown field {unknown[0]!r}" + closest(unknown[0], cls.model_fields)
        )
    try:
        return cls(**data)
    except ValidationError as error:
        first = error.errors()[0]
        field = "".join(f"{p}: " for p in first["loc"][:1])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{name} ({kind}): {field}{message}") from None
