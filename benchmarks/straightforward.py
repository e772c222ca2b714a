"""The straightforward implementation the engine is compared with.

For every condition: recompute the reference, run the FULL forward (no ``stop_at_layer``;
``run_with_cache`` on the read-out hook), encode the full SAE width, and accumulate dense
float64 sums of x, y, x^2, y^2 and xy over all tokens and features. Pearson r from the
raw sums. What a first version written from the paper's description would do.
"""

from __future__ import annotations

import numpy as np
import torch

from pytest_qdm.compress.swap import applied


def _features(model, sae, batch: torch.Tensor, hook: str) -> torch.Tensor:
    _, cache = model.run_with_cache(batch, names_filter=hook)
    return sae.encode(cache[hook].reshape(-1, sae.cfg.d_in)).double()


@torch.no_grad()
def straightforward_audit(model, sae, tokens, conditions, hook: str, batch_size: int):
    """Per-feature correlation (NaN where x or y is constant) and reference firing rate."""
    device = next(model.parameters()).device
    d_sae = sae.cfg.d_sae
    correlations, firing = {}, None
    for condition in conditions:
        weights = condition.compressed_weights(model)  # every layer
        sums = torch.zeros(5, d_sae, dtype=torch.float64, device=device)
        fired = torch.zeros(d_sae, dtype=torch.float64, device=device)
        n = 0
        for batch in torch.split(tokens, batch_size):
            batch = batch.to(device)
            x = _features(model, sae, batch, hook)
            with applied(model, weights):
                y = _features(model, sae, batch, hook)
            sums += torch.stack(
                [x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)]
            )
            fired += (x > 0).sum(0)
            n += x.shape[0]
        sx, sy, sxx, syy, sxy = sums.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (n * sxy - sx * sy) / np.sqrt((n * sxx - sx**2) * (n * syy - sy**2))
        correlations[condition.name] = r
        firing = (fired / n).cpu().numpy()
    return correlations, firing
