"""pytest-qdm: does the SAE feature map survive compression? (the QDM audit)

Importing this package is cheap: torch, transformer_lens and sae_lens load on first use of
the API below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AuditConfig": "config",
    "RTN": "compress",
    "MagnitudePrune": "compress",
    "Candidate": "compress",
    "Reference": "compress",
    "NF4": "schemes",
    "FP8": "schemes",
    "AbsmaxINT8": "schemes",
    "audit": "auditing",
    "AuditResult": "results",
    "ConditionResult": "results",
    "assert_feature_survival": "assertions",
    "assert_max_damaged": "assertions",
    "assert_features_survive": "assertions",
    "fit_survival_predictor": "predictor",
    "PredictorResult": "predictor",
    "compare_damage": "pruning",
    "OverlapResult": "pruning",
    "run_protocol": "protocol",
    "ProtocolReport": "protocol",
    "load_preset": "loading",
    "prune_sae": "sae_pruning",
    "sae_pruning_sweep": "sae_pruning",
    "TokenAgreement": "results",
}

__all__ = [
    "AuditConfig",
    "AuditResult",
    "Candidate",
    "ConditionResult",
    "MagnitudePrune",
    "NF4",
    "FP8",
    "AbsmaxINT8",
    "OverlapResult",
    "PredictorResult",
    "ProtocolReport",
    "RTN",
    "Reference",
    "assert_feature_survival",
    "assert_features_survive",
    "assert_max_damaged",
    "audit",
    "compare_damage",
    "fit_survival_predictor",
    "load_preset",
    "prune_sae",
    "run_protocol",
    "sae_pruning_sweep",
    "TokenAgreement",
    "__version__",
]

if TYPE_CHECKING:
    from .assertions import (
        assert_feature_survival,
        assert_features_survive,
        assert_max_damaged,
    )
    from .auditing import audit
    from .compress import RTN, Candidate, MagnitudePrune, Reference
    from .config import AuditConfig
    from .loading import load_preset
    from .predictor import PredictorResult, fit_survival_predictor
    from .protocol import ProtocolReport, run_protocol
    from .pruning import OverlapResult, compare_damage
    from .results import AuditResult, ConditionResult, TokenAgreement
    from .sae_pruning import prune_sae, sae_pruning_sweep
    from .schemes import FP8, NF4, AbsmaxINT8


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_qdm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
