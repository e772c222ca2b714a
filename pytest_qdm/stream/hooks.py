"""Read-out hooks, once: which hook, how far a forward must run to reach it, its width,
and capturing its activations.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING

import torch

from pytest_qdm.settings import AuditConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_D_MODEL_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_embed",
    "hook_pos_embed",
    "hook_mlp_in",
)


def resolve_hook(model, sae, config: AuditConfig) -> str:
    """The read-out hook: the config's, else the SAE's own; checked against the model."""
    hook = config.hook_name or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if not hook:
        raise ValueError(
            "the SAE names no hook (sae.cfg.metadata.hook_name is empty); "
            "pass AuditConfig(hook_name='blocks.N.hook_resid_post')"
        )
    if hook not in model.hook_dict:
        close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
        raise ValueError(
            f"hook {hook!r} is not in the model ({model.cfg.n_layers} layers); "
            f"did you mean one of {close}?"
        )
    return hook


def stop_layer(hook: str) -> int | None:
    """``stop_at_layer`` for a forward that reaches ``hook`` (None: the full model)."""
    match = _BLOCK_HOOK.match(hook)
    if match:
        return int(match.group(1)) + 1
    if hook in ("hook_embed", "hook_pos_embed"):
        return 0
    return None


def hook_width(model, hook: str) -> int:
    """Width of the activation at ``hook`` as an SAE sees it (heads flattened)."""
    cfg, suffix = model.cfg, hook.rsplit(".", 1)[-1]
    if suffix in _D_MODEL_HOOKS:
        return cfg.d_model
    if hook.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return cfg.d_mlp
    if hook.endswith(("attn.hook_z", "attn.hook_q")):
        return cfg.n_heads * cfg.d_head
    probe = torch.zeros(1, 1, dtype=torch.long, device=cfg.device)
    _, cache = model.run_with_cache(probe, names_filter=hook)
    return int(cache[hook][0, 0].numel())


def run_to_hook(model, batch: torch.Tensor, hook: str, *, loss: bool = False):
    """One forward of ``batch`` [n, ctx] that captures ``hook``: (activations
    [n * ctx, width], per-token loss or None), both on ``batch``'s device (a model split
    across devices computes them wherever its blocks are). Without ``loss`` it stops after
    the hook's block; no hook is left on the model."""
    captured = {}

    def capture(activation, hook):  # noqa: ARG001 (TransformerLens hook signature)
        captured["act"] = activation

    out = model.run_with_hooks(
        batch,
        fwd_hooks=[(hook, capture)],
        stop_at_layer=None if loss else stop_layer(hook),
        return_type="loss" if loss else None,
        loss_per_token=loss,
    )
    act = captured["act"].reshape(batch.shape[0] * batch.shape[1], -1).to(batch.device)
    return act, out.to(batch.device) if loss else None


def hook_activations(
    model: HookedTransformer, tokens: torch.Tensor, hook_name: str, batch_size: int = 8
) -> torch.Tensor:
    """Activations at ``hook_name`` for ``tokens`` [n, ctx], as [n * ctx, width]."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"model has no hook named {hook_name!r}")
    with torch.inference_mode():
        return torch.cat(
            [
                run_to_hook(model, tokens[i : i + batch_size].to(model.cfg.device), hook_name)[0]
                for i in range(0, tokens.shape[0], batch_size)
            ]
        )
