"""Bundled models and SAEs, ready to audit: nothing to download.

The files, hook names and SAEs of qdm-tiny are in :mod:`pytest_qdm.zoo.tiny` (which sits
below ``load/``); this package adds :func:`load_tiny_model`, which goes through the ordinary
loader (:func:`pytest_qdm.load.models.load_model`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.zoo.tiny import (
    TINY_CONTEXT_LENGTH,
    TINY_HOOK,
    TINY_HOOKS,
    TINY_MODEL_NAME,
    TINY_SECOND_HOOK,
    load_tiny_sae,
    load_tiny_saes,
    load_tiny_tokenizer,
    sae_dir,
    weights_dir,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "TINY_CONTEXT_LENGTH",
    "TINY_HOOK",
    "TINY_HOOKS",
    "TINY_MODEL_NAME",
    "TINY_SECOND_HOOK",
    "load_tiny_model",
    "load_tiny_sae",
    "load_tiny_saes",
    "load_tiny_tokenizer",
    "sae_dir",
    "weights_dir",
]


def load_tiny_model(device: str = "cpu") -> HookedTransformer:
    """qdm-tiny as a ``HookedTransformer``, exactly as the checkpoint has it, in eval mode
    (no layer-norm folding or centring: compression operates on the stored numbers)."""
    from pytest_qdm.load.models import load_model

    return load_model("tiny", device=device)
