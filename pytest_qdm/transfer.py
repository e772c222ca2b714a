"""SAE transfer quality: how well the frozen SAE still explains a compressed model.

For the reference and each condition, on a fixed token set: the SAE's explained variance,
MSE and mean L0 on that model's activations at the hook, and the language-model loss with
the SAE's reconstruction spliced in at the hook, against the clean loss and against
zero-ablating the hook (fraction of loss recovered = (L_zero - L_spliced) / (L_zero - L_clean)).
"""

from __future__ import annotations

import re

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


_RESIDUAL_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def resume_layer(hook: str) -> int | None:
    """The block a forward can resume from with ``hook``'s activation as its residual
    stream (``blocks.L.hook_resid_post`` -> L + 1), or None for other hooks."""
    match = _RESIDUAL_HOOK.match(hook)
    return None if match is None else int(match[1]) + (match[2] == "post")


class _Losses:
    """Per-token loss of a batch with the activation at ``hook`` replaced.

    At a residual-stream hook the replaced forward resumes after the hook from the clean
    run's residual (``start_at_layer``), so the layers below it run once per batch, not
    three times; elsewhere a full forward with a replacing hook.
    """

    def __init__(self, model, hook: str):
        self.model, self.hook, self.resume = model, hook, resume_layer(hook)

    def clean(self, batch: torch.Tensor, on_activation) -> torch.Tensor:
        """Loss of the unmodified model; ``on_activation(a)`` sees the hook's activation."""
        self.batch = batch
        if self.resume is not None:
            _, _, self.shortformer, self.mask = self.model.input_to_embed(batch)

        def observe(activation, hook):
            on_activation(activation)

        return self._forward(batch, [(self.hook, observe)])

    def replaced(self, activation: torch.Tensor) -> torch.Tensor:
        """Loss of the last :meth:`clean` batch with the hook's activation replaced."""
        if self.resume is None:
            return self._forward(self.batch, [(self.hook, lambda a, hook: activation)])
        return self.model(
            activation,
            start_at_layer=self.resume,
            tokens=self.batch,
            attention_mask=self.mask,
            shortformer_pos_embed=self.shortformer,
            return_type="loss",
            loss_per_token=True,
        )

    def _forward(self, batch, fwd_hooks) -> torch.Tensor:
        return self.model.run_with_hooks(
            batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks
        )


def sae_transfer(
    model, sae, tokens: torch.Tensor, hook: str, batch_size: int = 8
) -> TransferQuality:
    """Measure the SAE on ``model`` as it is (apply a condition around this call)."""
    sums = torch.zeros(6, dtype=F64)  # clean, spliced, zero loss; SSE; sum ||a||^2; L0
    total = None
    n_tokens = n_scored = 0
    losses = _Losses(model, hook)
    seen = {}

    with torch.inference_mode():
        for batch in torch.split(tokens, batch_size):
            batch = batch.to(model.cfg.device)
            clean = losses.clean(batch, lambda a: seen.update(activation=a))
            activation = seen["activation"]
            features = sae.encode(activation.to(sae.dtype))
            recon = sae.decode(features).to(activation.dtype)
            flat = activation.to(F64).reshape(-1, sae.cfg.d_in)
            sums[3] += float((recon.to(F64).reshape(-1, sae.cfg.d_in) - flat).square().sum())
            sums[4] += float(flat.square().sum())
            sums[5] += float((features > 0).sum())
            total = flat.sum(0) if total is None else total + flat.sum(0)
            spliced = losses.replaced(recon)
            sums[0] += float(clean.double().sum())
            sums[1] += float(spliced.double().sum())
            sums[2] += float(losses.replaced(torch.zeros_like(activation)).double().sum())
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
