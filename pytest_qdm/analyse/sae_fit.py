"""Does the SAE fit the model at its read-out hook? A cheap check before an audit.

An SAE read at the wrong layer, on another model, or on processed weights (folded layer
norms, centred writing weights) while it was trained on unprocessed ones, encodes noise:
the audit would then report on features that never meant anything. The check reconstructs
a small reference batch and compares:

- explained variance EV = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over tokens
  (x: hook activation, x_hat = decode(encode(x)); float64 sums), leaving out massive
  activations (attention sinks: ||x|| over ``MASSIVE_NORM`` times the median), which would
  otherwise decide the sums alone (SmolLM2's first positions: 140x the median norm),
- mean L0 (active features per token),
- mean ||x|| against mean ||x_hat|| and ||b_dec|| (a scale mismatch shows up here first).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pytest_qdm.schema.analyses import SaeFit
from pytest_qdm.stream.hooks import hook_activations

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

ADVICE = (
    "Wrong layer or hook name? An SAE for another model? Processed weights (fold_ln, centred "
    "writing weights) while the SAE was trained on unprocessed ones, or the reverse? Load "
    "the model with pytest_qdm.load.models.load_model (unprocessed) and the SAE made for it."
)


MASSIVE_NORM = 10.0


def typical_tokens(acts: torch.Tensor) -> torch.Tensor:
    """Mask of the activations [n, d] whose norm is at most ``MASSIVE_NORM`` x the median."""
    norms = acts.double().norm(dim=-1)
    return norms <= MASSIVE_NORM * norms.median()


def _reconstruction_sums(sae: SAE, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 sums over activations ``acts`` [n, d_in]: squared error, ||x||^2, ||x||,
    ||x_hat||, L0 (in that order), and the sum of x."""
    import torch

    sums = torch.zeros(5, dtype=torch.float64)  # err^2, ||x||^2, ||x||, ||x_hat||, L0
    sum_x = torch.zeros(acts.shape[1], dtype=torch.float64)
    with torch.inference_mode():
        for chunk in acts.split(512):
            x = chunk.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
            features = sae.encode(x)
            x_hat = sae.decode(features).double().cpu()  # decode undoes encode's state
            x = x.double().cpu()
            sums += torch.stack(
                [
                    ((x - x_hat) ** 2).sum(),
                    (x**2).sum(),
                    x.norm(dim=-1).sum(),
                    x_hat.norm(dim=-1).sum(),
                    (features > 0).sum().double().cpu(),
                ]
            )
            sum_x += x.sum(0)
    return sums, sum_x


def check_sae_fit(
    model: HookedTransformer,
    sae: SAE,
    tokens: Any,
    *,
    hook_name: str | None = None,
    min_explained_variance: float | None = 0.5,
    max_tokens: int = 2048,
) -> SaeFit:
    """Measure the SAE's fit on at most ``max_tokens`` tokens of ``tokens`` (a LongTensor
    [n, ctx] or an object with ``.tokens``). ``ok`` is EV >= ``min_explained_variance``.
    Neither model nor SAE is modified."""
    import torch

    tokens = getattr(tokens, "tokens", tokens)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise TypeError(f"tokens must be a LongTensor [n, ctx], got {type(tokens).__name__}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if min_explained_variance is not None and not min_explained_variance <= 1:
        raise ValueError(f"min_explained_variance must be <= 1, got {min_explained_variance!r}")
    sae_hook = sae.cfg.metadata.hook_name
    hook_name = hook_name or sae_hook
    if not hook_name:
        raise ValueError("the SAE names no hook (sae.cfg.metadata.hook_name); pass hook_name")

    rows = min(tokens.shape[0], math.ceil(max_tokens / tokens.shape[1]))
    acts = hook_activations(model, tokens[:rows], hook_name)[:max_tokens]
    d_in = sae.cfg.d_in
    if acts[0].numel() != d_in:
        raise ValueError(
            f"activations at {hook_name!r} have shape {tuple(acts.shape[1:])} but the SAE "
            f"expects d_in={d_in}. {ADVICE}"
        )
    acts = acts.reshape(len(acts), d_in)
    typical = typical_tokens(acts)
    massive = int((~typical).sum())
    acts = acts[typical]
    sums, sum_x = _reconstruction_sums(sae, acts)
    b_dec_norm = float(sae.b_dec.detach().double().norm())
    n = len(acts)
    total = float(sums[1] - (sum_x @ sum_x) / n)  # sum ||x - mean||^2
    ev = 1 - float(sums[0]) / total if total > 0 else float("nan")
    act_norm, rec_norm = float(sums[2]) / n, float(sums[3]) / n
    ratio = rec_norm / act_norm if act_norm > 0 else float("nan")
    threshold = "none" if min_explained_variance is None else f"{min_explained_variance:.2f}"
    numbers = (
        f"explained variance {ev:.3f} (threshold {threshold}), mean L0 "
        f"{float(sums[4]) / n:.1f} of {sae.cfg.d_sae} features, mean activation norm "
        f"{act_norm:.4g} vs reconstruction norm {rec_norm:.4g} (ratio {ratio:.2f}), "
        f"||b_dec|| {b_dec_norm:.4g}, on {n} tokens at {hook_name!r}"
    )
    if massive:
        numbers += (
            f" ({massive} massive-activation tokens, norm > {MASSIVE_NORM:g}x the median, left out)"
        )
    if sae_hook and sae_hook != hook_name:
        numbers += f" (the SAE was made for {sae_hook!r})"
    ok = min_explained_variance is None or ev >= min_explained_variance  # False for NaN
    return SaeFit(
        hook_name=hook_name,
        n_tokens=n,
        d_sae=sae.cfg.d_sae,
        explained_variance=ev,
        mean_l0=float(sums[4]) / n,
        activation_norm=act_norm,
        reconstruction_norm=rec_norm,
        norm_ratio=ratio,
        b_dec_norm=b_dec_norm,
        min_explained_variance=min_explained_variance,
        n_massive_tokens=massive,
        ok=ok,
        reason=f"SAE fits: {numbers}" if ok else f"SAE does not fit the model: {numbers}",
    )


def require_sae_fit(model: HookedTransformer, sae: SAE, tokens: Any, **kwargs: Any) -> SaeFit:
    """:func:`check_sae_fit`, raising ValueError with the numbers and what to check when
    the SAE does not fit. Returns the fit otherwise."""
    fit = check_sae_fit(model, sae, tokens, **kwargs)
    if not fit.ok:
        raise ValueError(f"{fit.reason}. {ADVICE}")
    return fit
