"""SAE transfer quality: how well the frozen SAE still explains a compressed model.

For the reference and each condition, on a fixed token set: the SAE's explained variance,
MSE and mean L0 on that model's activations at the hook, and the language-model loss with
the SAE's reconstruction spliced in at the hook, against the clean loss and against
zero-ablating the hook (fraction of loss recovered = (L_zero - L_spliced) / (L_zero - L_clean)).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

F64 = torch.float64


class TransferQuality(BaseModel):
    model_config = ConfigDict(frozen=True)

    explained_variance: float | None
    mse: float
    mean_l0: float
    clean_loss: float
    spliced_loss: float
    zero_ablation_loss: float
    loss_recovered: float | None
    n_tokens: int


def _loss(model, batch, hook, replace) -> torch.Tensor:
    fwd_hooks = [] if replace is None else [(hook, replace)]
    return model.run_with_hooks(batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks)


def sae_transfer(
    model, sae, tokens: torch.Tensor, hook: str, batch_size: int = 8
) -> TransferQuality:
    """Measure the SAE on ``model`` as it is (apply a condition around this call)."""
    sums = torch.zeros(6, dtype=F64)  # clean, spliced, zero loss; SSE; sum ||a||^2; L0
    total = None
    n_tokens = n_scored = 0

    def splice(activation, hook):
        nonlocal total
        features = sae.encode(activation.to(sae.dtype))
        recon = sae.decode(features).to(activation.dtype)
        flat = activation.to(F64).reshape(-1, sae.cfg.d_in)
        sums[3] += float((recon.to(F64).reshape(-1, sae.cfg.d_in) - flat).square().sum())
        sums[4] += float(flat.square().sum())
        sums[5] += float((features > 0).sum())
        total = flat.sum(0) if total is None else total + flat.sum(0)
        return recon

    with torch.inference_mode():
        for batch in torch.split(tokens, batch_size):
            batch = batch.to(model.cfg.device)
            sums[0] += float(_loss(model, batch, hook, None).double().sum())
            spliced = _loss(model, batch, hook, splice)
            sums[1] += float(spliced.double().sum())
            sums[2] += float(
                _loss(model, batch, hook, lambda a, hook: torch.zeros_like(a)).double().sum()
            )
            n_scored += spliced.numel()
            n_tokens += batch.numel()
    variance = float(sums[4]) - float(total @ total) / n_tokens
    clean, spliced_loss, zero = (float(v) / n_scored for v in sums[:3])
    gap = zero - clean
    return TransferQuality(
        explained_variance=1 - float(sums[3]) / variance if variance > 0 else None,
        mse=float(sums[3]) / (n_tokens * sae.cfg.d_in),
        mean_l0=float(sums[5]) / n_tokens,
        clean_loss=clean,
        spliced_loss=spliced_loss,
        zero_ablation_loss=zero,
        loss_recovered=(zero - spliced_loss) / gap if gap > 0 else None,
        n_tokens=n_tokens,
    )
