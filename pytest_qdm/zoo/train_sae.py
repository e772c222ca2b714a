"""Training and measuring the bundled SAEs (used by ``python -m pytest_qdm.zoo.train``).

An SAE (sparse autoencoder) here is a sae_lens ``StandardSAE``: f = ReLU((x - b_dec) W_enc +
b_enc), x_hat = f W_dec + b_dec, with d_in = the model's d_model and d_sae features. It is
trained with a plain loop on cached residual-stream activations:

    loss = mean_t ||x_hat - x||^2 + lambda * mean_t sum_i f_i ||W_dec[i]||

(the sparsity penalty of Anthropic's April 2024 update), on inputs scaled so that
E||x||^2 = d_in; the scale is folded into the weights before saving, so the saved SAE takes
raw activations. Features that do not fire for a while are resampled towards badly
reconstructed inputs (Anthropic, "Towards Monosemanticity", 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import StandardSAE


@dataclass(frozen=True)
class SAETrainConfig:
    d_sae: int = 1024
    l1_coefficient: float = 1.0
    steps: int = 3000
    batch_size: int = 2048
    lr: float = 1e-3
    l1_warmup_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    resample_every: int = 1000
    resample_until_fraction: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class SAEQuality:
    """Quality on a token set: explained variance (pooled), mean L0, dead-feature fraction."""

    explained_variance: float
    mean_l0: float
    dead_fraction: float
    n_tokens: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def collect_activations(
    model: Any, tokens: torch.Tensor, hook_names: list[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Residual activations ``[n_tokens, d_model]`` at each hook, every position (BOS included)."""
    import torch

    layers = [int(h.split(".")[1]) for h in hook_names]
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hook_names}
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            _, cache = model.run_with_cache(
                tokens[start : start + batch_size],
                names_filter=lambda name: name in out,
                stop_at_layer=max(layers) + 1,
            )
            for h in hook_names:
                out[h].append(cache[h].reshape(-1, cache[h].shape[-1]).float())
    return {h: torch.cat(v) for h, v in out.items()}


def sae_quality(sae: Any, acts: torch.Tensor, batch_size: int = 8192) -> SAEQuality:
    """Explained variance 1 - sum||x - x_hat||^2 / sum||x - mean x||^2, mean L0, dead fraction."""
    import torch

    mean = acts.mean(0)
    resid = total = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, acts.shape[0], batch_size):
            x = acts[start : start + batch_size]
            f = sae.encode(x)
            x_hat = sae.decode(f)
            resid += float(((x - x_hat) ** 2).sum())
            total += float(((x - mean) ** 2).sum())
            active = f > 0
            l0 += float(active.sum())
            fired |= active.any(0).cpu()
    return SAEQuality(
        explained_variance=1.0 - resid / total,
        mean_l0=l0 / acts.shape[0],
        dead_fraction=float((~fired).float().mean()),
        n_tokens=int(acts.shape[0]),
    )


def _resample(sae: Any, opt: Any, dead: torch.Tensor, x: torch.Tensor, gen: Any) -> int:
    """Point dead features at inputs sampled in proportion to their squared reconstruction error."""
    import torch

    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    with torch.no_grad():
        err = ((sae.decode(sae.encode(x)) - x) ** 2).sum(-1)
        pick = torch.multinomial(err + 1e-12, idx.numel(), replacement=False, generator=gen)
        direction = x[pick] - sae.b_dec
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec.data[idx] = direction
        sae.W_enc.data[:, idx] = direction.T * enc_norm * 0.2
        sae.b_enc.data[idx] = 0.0
        for p in (sae.W_dec, sae.W_enc, sae.b_enc):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    if p is sae.W_enc:
                        state[key][:, idx] = 0.0
                    else:
                        state[key][idx] = 0.0
    return int(idx.numel())


def train_sae(
    acts: torch.Tensor, cfg: SAETrainConfig, metadata: dict[str, Any], log: Any = print
) -> tuple[StandardSAE, dict[str, Any]]:
    """Train a ``StandardSAE`` on ``acts`` ``[n_tokens, d_in]``; returns it with raw-input weights."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    d_in = acts.shape[1]
    scale = math.sqrt(d_in / float((acts**2).sum(-1).mean()))
    data = acts * scale
    sae = StandardSAE(
        StandardSAEConfig(d_in=d_in, d_sae=cfg.d_sae, metadata=SAEMetadata(**metadata))
    )
    with torch.no_grad():
        w = torch.randn(cfg.d_sae, d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True) * 0.1
        sae.W_dec.data.copy_(w)
        sae.W_enc.data.copy_(w.T)
        sae.b_enc.data.zero_()
        sae.b_dec.data.copy_(data.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    warm = max(1, int(cfg.l1_warmup_fraction * cfg.steps))
    decay_start = int((1 - cfg.lr_decay_fraction) * cfg.steps)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    n_resampled = 0
    for step in range(cfg.steps):
        x = data[torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)]
        lam = cfg.l1_coefficient * min(1.0, (step + 1) / warm)
        lr_mult = 1.0 if step < decay_start else (cfg.steps - step) / (cfg.steps - decay_start)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_mult
        f = sae.encode(x)
        x_hat = sae.decode(f)
        mse = ((x_hat - x) ** 2).sum(-1).mean()
        sparsity = (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = mse + lam * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        fired = (f > 0).any(0).detach()
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
        if (
            step + 1
        ) % cfg.resample_every == 0 and step + 1 <= cfg.resample_until_fraction * cfg.steps:
            n = _resample(sae, opt, since_fired >= cfg.resample_every // 2, x, gen)
            since_fired[since_fired >= cfg.resample_every // 2] = 0
            n_resampled += n
            log(f"  sae step {step + 1}: resampled {n} features")
        if (step + 1) % max(1, cfg.steps // 10) == 0:
            with torch.no_grad():
                ev = 1 - float(((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
                l0 = float((f > 0).float().sum(-1).mean())
            log(
                f"  sae step {step + 1}/{cfg.steps}: mse {float(mse.detach()):.3f} l0 {l0:.1f} ev {ev:.3f}"
            )
    sae.fold_activation_norm_scaling_factor(scale)
    sae.eval()
    stats = {"activation_scale": scale, "features_resampled": n_resampled, **asdict(cfg)}
    return sae, stats
