"""What a feature pass runs (:class:`PassSpec`), and its inputs checked before any long work:
model, SAE and tokens (:func:`validate_inputs`), the conditions (:func:`validate_conditions`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pytest_qdm.compress.conditions import Condition
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.hooks import hook_width


@dataclass(frozen=True)
class PassSpec:
    """What every batch of a pass runs: the reference ``model``, the frozen ``sae`` read at
    ``hook``, the ``conditions`` with their ``prepared`` weights (name -> weights, or
    run/audit.py's ``OnDemand``), and the settings. The tokens, progress callback,
    drill-down and row domains vary per call (:func:`~pytest_qdm.stream.passes.run_pass`)."""

    model: Any
    sae: Any
    conditions: Sequence[Condition]
    prepared: Mapping[str, dict[str, torch.Tensor]]
    hook: str
    config: AuditConfig


def validate_inputs(model, sae, tokens: torch.Tensor, hook: str, top_k: int | None = None) -> None:
    """Raise ValueError/TypeError for bad input, before any long work (``top_k``: the
    token lenses' k, when they are on)."""
    if not hasattr(model, "hook_dict") or not hasattr(model, "cfg"):
        raise TypeError(f"model must be a TransformerLens HookedTransformer, got {type(model)}")
    if not hasattr(sae, "encode") or not hasattr(sae, "cfg"):
        raise TypeError(f"sae must be a sae_lens SAE, got {type(sae)}")
    width = hook_width(model, hook)
    if sae.cfg.d_in != width:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} but the activation at {hook!r} has width {width}; "
            "use the SAE trained for this model and hook"
        )
    if top_k is not None and top_k > sae.cfg.d_sae:
        raise ValueError(
            f"top_k={top_k} exceeds the SAE's {sae.cfg.d_sae} features; "
            "pass AuditConfig(top_k=...) of at most d_sae, or token_lenses=False"
        )
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.LongTensor [n, ctx], got {type(tokens)}")
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(
            f"tokens must be a 2-D integer tensor [n, ctx], got {tokens.dtype} {tuple(tokens.shape)}"
        )
    if tokens.numel() == 0:
        raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); pass at least one row")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        raise ValueError(
            f"token ids must lie in [0, {model.cfg.d_vocab}) (the model's vocabulary), "
            f"got ids from {low} to {high}; was the text tokenized for another model?"
        )
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(
            f"sequences of {tokens.shape[1]} tokens exceed the model's context {model.cfg.n_ctx}"
        )


def validate_conditions(conditions: Sequence[Condition]) -> None:
    if not conditions:
        raise ValueError("no conditions given; pass e.g. [qdm.RTN(bits=6)]")
    for condition in conditions:
        if not isinstance(condition, Condition):
            raise TypeError(
                f"conditions must be qdm.RTN/MagnitudePrune/Candidate/Reference, got {condition!r}"
            )
    names = [c.name for c in conditions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"condition names must be unique, got duplicates {duplicates}")
