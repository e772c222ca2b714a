"""Interpretability claims as regression tests (docs/claims.md): one module per kind
(survives, detects, steers, ablates, probe), the registry, the claims file and
``check_claims``. Importing this package imports no torch."""

from pytest_qdm.claims.base import Claim
from pytest_qdm.claims.registry import KINDS, claim_from_dict

__all__ = ["KINDS", "Claim", "claim_from_dict"]
