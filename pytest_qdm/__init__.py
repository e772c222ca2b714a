"""pytest-qdm: does the SAE feature map survive compression? (the QDM audit)

Importing this package is cheap: torch, transformer_lens and sae_lens load on first use of
the API below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AuditConfig": "settings",
    "RTN": "compress.conditions",
    "MagnitudePrune": "compress.conditions",
    "Candidate": "compress.conditions",
    "Reference": "compress.conditions",
    "NoiseFloor": "compress.noise_floor",
    "tokens_for": "analyse.precision",
    "noise_floor": "compress.noise_floor",
    "NF4": "compress.schemes",
    "FP8": "compress.schemes",
    "AbsmaxINT8": "compress.schemes",
    "audit": "run.audit",
    "AuditResult": "schema.audit",
    "ConditionResult": "schema.audit",
    "assert_feature_survival": "assertions",
    "assert_max_damaged": "assertions",
    "assert_features_survive": "assertions",
    "fit_survival_predictor": "analyse.predictor",
    "PredictorResult": "schema.analyses",
    "compare_damage": "analyse.overlap",
    "OverlapResult": "schema.analyses",
    "run_protocol": "run.protocol",
    "ProtocolReport": "schema.protocol",
    "load_preset": "load.subject",
    "prune_sae": "analyse.sae_pruning",
    "sae_pruning_sweep": "analyse.sae_pruning",
    "retrain_sae": "run.retrain_phase",
    "RetrainResult": "schema.retrain",
    "TokenAgreement": "schema.audit",
    "check_claims": "claims.check",
    "load_claims": "claims.files",
    "ClaimsReport": "schema.claims",
}

__all__ = [
    "AuditConfig",
    "AuditResult",
    "Candidate",
    "ConditionResult",
    "MagnitudePrune",
    "NoiseFloor",
    "noise_floor",
    "tokens_for",
    "NF4",
    "FP8",
    "AbsmaxINT8",
    "OverlapResult",
    "PredictorResult",
    "ProtocolReport",
    "RTN",
    "Reference",
    "RetrainResult",
    "assert_feature_survival",
    "assert_features_survive",
    "assert_max_damaged",
    "audit",
    "compare_damage",
    "fit_survival_predictor",
    "load_preset",
    "prune_sae",
    "retrain_sae",
    "run_protocol",
    "sae_pruning_sweep",
    "TokenAgreement",
    "check_claims",
    "load_claims",
    "ClaimsReport",
    "__version__",
]

_SUBMODULES = ("assertions", "options", "settings", "progress", "zoo")

if TYPE_CHECKING:
    from pytest_qdm.analyse.overlap import compare_damage
    from pytest_qdm.analyse.precision import tokens_for
    from pytest_qdm.analyse.predictor import fit_survival_predictor
    from pytest_qdm.analyse.sae_pruning import prune_sae, sae_pruning_sweep
    from pytest_qdm.assertions import (
        assert_feature_survival,
        assert_features_survive,
        assert_max_damaged,
    )
    from pytest_qdm.claims.check import check_claims
    from pytest_qdm.claims.files import load_claims
    from pytest_qdm.compress.conditions import RTN, Candidate, MagnitudePrune, Reference
    from pytest_qdm.compress.noise_floor import NoiseFloor, noise_floor
    from pytest_qdm.compress.schemes import FP8, NF4, AbsmaxINT8
    from pytest_qdm.load.subject import load_preset
    from pytest_qdm.run.audit import audit
    from pytest_qdm.run.protocol import run_protocol
    from pytest_qdm.run.retrain_phase import retrain_sae
    from pytest_qdm.schema.analyses import OverlapResult, PredictorResult
    from pytest_qdm.schema.audit import AuditResult, ConditionResult, TokenAgreement
    from pytest_qdm.schema.claims import ClaimsReport
    from pytest_qdm.schema.protocol import ProtocolReport
    from pytest_qdm.schema.retrain import RetrainResult
    from pytest_qdm.settings import AuditConfig


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None and name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if module is None:
        raise AttributeError(f"module 'pytest_qdm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
