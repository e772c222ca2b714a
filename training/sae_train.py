"""TopK SAE training (sae_lens ``TopKSAE``) on cached residual activations.

f = TopK_k((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec. Loss: mean ||x_hat - x||^2
on inputs scaled so that E||x||^2 = d_in (the scale is folded into the saved weights, so the
saved SAE takes raw activations). Decoder rows are kept unit-norm; features that have not
fired for ``resample_every // 2`` steps are re-pointed at badly reconstructed inputs.
"""

from __future__ import annotations

import math
from typing import Any


def collect_activations(tl_model: Any, rows: Any, hooks: list[str], batch_size: int = 64) -> dict:
    import torch

    top = max(int(h.split(".")[1]) for h in hooks) + 1
    out: dict[str, list] = {h: [] for h in hooks}
    with torch.no_grad():
        for s in range(0, rows.shape[0], batch_size):
            _, cache = tl_model.run_with_cache(
                rows[s : s + batch_size], names_filter=lambda n: n in out, stop_at_layer=top
            )
            for h in hooks:
                out[h].append(cache[h].reshape(-1, cache[h].shape[-1]).float())
    return {h: torch.cat(v) for h, v in out.items()}


def train_topk_sae(
    acts: Any,
    d_sae: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    metadata: dict,
    log: Any = print,
    resample_every: int = 250,
) -> tuple[Any, dict]:
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d_in = acts.shape[1]
    scale = math.sqrt(d_in / float((acts**2).sum(-1).mean()))
    x_all = acts * scale
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(**metadata)))
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        sae.W_dec.data.copy_(w)
        sae.W_enc.data.copy_(w.T)
        sae.b_enc.data.zero_()
        sae.b_dec.data.copy_(x_all.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    since = torch.zeros(d_sae, dtype=torch.long)
    n_resampled = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, 2.0 * (steps - step) / steps)
        x = x_all[torch.randint(0, x_all.shape[0], (batch_size,), generator=gen)]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        loss = ((x_hat - x) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        since = torch.where((f > 0).any(0), torch.zeros_like(since), since + 1)
        if (step + 1) % resample_every == 0 and step + 1 <= 0.7 * steps:
            dead = since >= resample_every // 2
            idx = dead.nonzero().flatten()
            if idx.numel():
                with torch.no_grad():
                    err = ((x_hat - x) ** 2).sum(-1)
                    n = min(idx.numel(), x.shape[0])
                    idx = idx[:n]
                    pick = torch.multinomial(err + 1e-12, n, replacement=False, generator=gen)
                    d = x[pick] - sae.b_dec
                    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                    sae.W_dec.data[idx] = d
                    sae.W_enc.data[:, idx] = d.T
                    sae.b_enc.data[idx] = 0.0
                    for p in (sae.W_dec, sae.W_enc, sae.b_enc):
                        st = opt.state.get(p, {})
                        for key in ("exp_avg", "exp_avg_sq"):
                            if key in st:
                                if p is sae.W_enc:
                                    st[key][:, idx] = 0.0
                                else:
                                    st[key][idx] = 0.0
                since[idx] = 0
                n_resampled += int(idx.numel())
        if (step + 1) % max(1, steps // 5) == 0:
            with torch.no_grad():
                ev = 1 - float(((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
            log(f"  sae step {step + 1}/{steps}: mse {float(loss.detach()):.3f} ev {ev:.3f}")
    sae.fold_activation_norm_scaling_factor(scale)
    sae.eval()
    return sae, {"activation_scale": scale, "features_resampled": n_resampled}


def sae_quality(sae: Any, acts: Any, batch_size: int = 8192) -> dict:
    import torch

    mean = acts.mean(0)
    resid = total = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for s in range(0, acts.shape[0], batch_size):
            x = acts[s : s + batch_size]
            f = sae.encode(x)
            resid += float(((x - sae.decode(f)) ** 2).sum())
            total += float(((x - mean) ** 2).sum())
            l0 += float((f > 0).sum())
            fired |= (f > 0).any(0)
    return {
        "explained_variance": 1.0 - resid / total,
        "mean_l0": l0 / acts.shape[0],
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": int(acts.shape[0]),
    }
