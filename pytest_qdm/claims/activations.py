"""SAE feature activations of one text or of the audit tokens, on any model (the
read-out hook captured by the project's one capture helper)."""

from __future__ import annotations

import torch

from pytest_qdm.claims.base import ClaimContext
from pytest_qdm.stream.hooks import hook_activations, run_to_hook


def text_codes(ctx: ClaimContext, model, text: str) -> torch.Tensor:
    """The SAE's codes [n_tokens, d_sae] of ``text``'s own tokens on ``model`` (float32,
    CPU): a prepended BOS is dropped, it is the same for every text and carries no
    concept (its activation is an outlier the SAE was not fitted to read)."""
    tokens = ctx.tokens(text).to(ctx.device_of(model))
    with torch.inference_mode():
        acts, _ = run_to_hook(model, tokens, ctx.hook)
        codes = encode(ctx, acts)
    return codes[1:] if ctx.prepend_bos and len(codes) > 1 else codes


def audit_codes(ctx: ClaimContext, model, features: list[int]) -> torch.Tensor | None:
    """The named features' codes over the audit tokens [n_tokens, len(features)] (None
    without audit tokens)."""
    if ctx.audit_tokens is None:
        return None
    acts = hook_activations(model, ctx.audit_tokens, ctx.hook)
    with torch.inference_mode():
        return torch.cat(
            [encode(ctx, acts[i : i + 4096])[:, features] for i in range(0, len(acts), 4096)]
        )


def encode(ctx: ClaimContext, acts: torch.Tensor) -> torch.Tensor:
    """The SAE's codes of activations [n, width], float32 on the CPU, without autograd."""
    sae = ctx.sae
    with torch.inference_mode():
        return sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
