"""pytest-qdm: does the SAE feature map survive compression? (the QDM audit)

Importing this package is cheap: torch, transformer_lens and sae_lens load on first use of
the API below.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Every public name and the module that defines it: the one list (``__all__`` is its keys).
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

__all__ = ["__version__"]
__all__ += list(_EXPORTS)

_SUBMODULES = ("assertions", "options", "settings", "progress", "zoo")


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None and name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if module is None:
        raise AttributeError(f"module 'pytest_qdm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
