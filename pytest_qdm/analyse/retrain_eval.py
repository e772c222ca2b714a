"""The three-way table of arXiv 2507.15977 on a condition's model, and the activation
correlation of matched features (the evaluation half of :mod:`pytest_qdm.analyse.retrain`).

Columns: the frozen reference SAE (transfer), the retrained SAE, and the reference SAE
pruned without retraining (:mod:`pytest_qdm.analyse.sae_pruning`, importance
``decoder_norm_x_mean``) to the retrained SAE's live width (its features that fire on the
evaluation tokens; at least a TopK SAE's k). Explained variance, L0 and the spliced losses
come from :func:`pytest_qdm.analyse.transfer.sae_transfers`; a dead latent fires on none of
the evaluation tokens of the condition's model.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch

from pytest_qdm.analyse.sae_pruning import kept_features, select_features
from pytest_qdm.analyse.transfer import sae_transfers
from pytest_qdm.schema.retrain import COLUMNS, ThreeWayRow
from pytest_qdm.stream.hooks import run_to_hook
from pytest_qdm.stream.stats import PairedStats


def _batches(rows: torch.Tensor, batch_size: int):
    for start in range(0, rows.shape[0], batch_size):
        yield rows[start : start + batch_size]


def feature_pass(model, sae, others, condition, rows, hook, pairs, batch_size):
    """Firing counts of each of ``others`` on the condition's model, and Pearson r of
    reference feature ``pairs[0][i]`` (``sae`` on the reference model) with feature
    ``pairs[1][i]`` of ``others[0]`` (on the condition's model), over the same tokens."""
    reference_ids, matched_ids = (torch.as_tensor(p, dtype=torch.long) for p in pairs)
    weights = condition.compressed_weights(model)
    fired = [torch.zeros(o.cfg.d_sae, dtype=torch.float64) for o in others]
    paired = PairedStats.empty(len(reference_ids))
    with torch.no_grad():
        for batch in _batches(rows, batch_size):
            batch = batch.to(model.cfg.device)
            x, _ = run_to_hook(model, batch, hook)
            with condition.running(model, weights) as run:
                y, _ = run_to_hook(run, batch, hook)
            codes = [o.encode(y.to(o.W_dec.device, o.W_dec.dtype)).cpu() for o in others]
            for count, code in zip(fired, codes, strict=True):
                count += (code > 0).sum(0).double()
            f = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).cpu()
            if pairs is not None and len(reference_ids):
                paired = paired.merge(
                    PairedStats.of_batch(f[:, reference_ids], codes[0][:, matched_ids])
                )
    r = paired.correlation()[0] if paired.n else np.full(len(reference_ids), np.nan)
    return [count.numpy() for count in fired], r


def matched_size(sae, retrained_fired: np.ndarray) -> int:
    """The pruned column's width: the retrained SAE's live features (at least TopK's k)."""
    k = getattr(sae.cfg, "k", None)
    floor = int(k) if isinstance(k, Real) else 1
    return min(int(sae.cfg.d_sae), max(int((retrained_fired > 0).sum()), floor))


def evaluate_three_way(
    model, sae, retrained, condition, rows, hook, reference, config, pairs
) -> tuple[list[ThreeWayRow], np.ndarray]:
    """(the three rows, activation r of each (reference, matched) pair); see module doc."""
    batch = config.batch_size
    (fired_frozen, fired_retrained), r = feature_pass(
        model, sae, [sae, retrained], condition, rows, hook, pairs, batch
    )
    d_sae = int(sae.cfg.d_sae)
    fraction = (d_sae - matched_size(sae, fired_retrained)) / d_sae
    pruned = select_features(sae, kept_features(sae, fraction, reference))
    (fired_pruned,), _ = feature_pass(model, sae, [pruned], condition, rows, hook, ([], []), batch)
    weights = condition.compressed_weights(model)
    with condition.running(model, weights) as run:
        qualities = sae_transfers(run, [sae, retrained, pruned], rows, hook, batch)
    saes = (sae, retrained, pruned)
    fired = (fired_frozen, fired_retrained, fired_pruned)
    table = [
        ThreeWayRow(
            sae=name,
            n_features=int(each.cfg.d_sae),
            explained_variance=q.explained_variance,
            mean_l0=q.mean_l0,
            clean_loss=q.clean_loss,
            spliced_loss=q.spliced_loss,
            spliced_loss_change=q.spliced_loss - q.clean_loss,
            loss_recovered=q.loss_recovered,
            dead_latents=int((count == 0).sum()),
        )
        for name, each, q, count in zip(COLUMNS, saes, qualities, fired, strict=True)
    ]
    return table, r
