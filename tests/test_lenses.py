"""Token-level lenses and SAE transfer quality against direct dense computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qdm.lenses import AgreementSums
from pytest_qdm.transfer import sae_transfer


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(200, 40, generator=g) - 0.5)
    y = torch.relu(x + 0.3 * torch.randn(200, 40, generator=g) - 0.05)
    a = torch.randn(200, 8, generator=g)
    b = a + 0.1 * torch.randn(200, 8, generator=g)
    return x, y, a, b


def test_sample_correlation_and_topk_equal_direct_computation(pair):
    x, y, a, b = pair
    result = AgreementSums.of_batch(x, y, a, b, k=5).result(5)
    xs, ys = x.double().numpy(), y.double().numpy()
    corr = [
        np.corrcoef(xs[t], ys[t])[0, 1]
        for t in range(len(xs))
        if xs[t].std() > 0 and ys[t].std() > 0
    ]
    assert result.sample_correlation == pytest.approx(np.mean(corr), abs=1e-12)
    overlaps = []
    for t in range(len(xs)):
        if (xs[t] > 0).sum() >= 5:
            top_x = set(np.argsort(-xs[t], kind="stable")[:5])
            top_y = {i for i in np.argsort(-ys[t], kind="stable")[:5] if ys[t, i] > 0}
            overlaps.append(len(top_x & top_y) / 5)
    assert result.n_topk_tokens == len(overlaps)
    assert result.topk_agreement == pytest.approx(np.mean(overlaps), abs=1e-12)


def test_procrustes_recovers_a_known_rotation():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    b = a @ rotation
    x = torch.ones(500, 4)
    result = AgreementSums.of_batch(x, x, a, b, k=2).result(2)
    assert result.procrustes_aligned_error == pytest.approx(0.0, abs=1e-6)
    expected = float((a - b).norm() / b.norm())
    assert result.unaligned_error == pytest.approx(expected, rel=1e-9) and expected > 0.5


def test_sums_merge_like_one_pass(pair):
    x, y, a, b = pair
    whole = AgreementSums.of_batch(x, y, a, b, k=3)
    merged = AgreementSums.of_batch(x[:70], y[:70], a[:70], b[:70], 3).merge(
        AgreementSums.of_batch(x[70:], y[70:], a[70:], b[70:], 3)
    )
    assert merged.result(3) == whole.result(3) or np.allclose(
        list(merged.result(3).model_dump().values()), list(whole.result(3).model_dump().values())
    )


def exact_sae(d_in: int, hook: str):
    """An SAE whose reconstruction is exact: features relu(x), relu(-x); decode adds them back."""
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in)
    config.metadata.hook_name = hook
    sae = StandardSAE(config)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_spliced_loss_equals_clean_loss_when_reconstruction_is_exact(neox_model, neox_tokens):
    hook = "blocks.1.hook_resid_post"
    quality = sae_transfer(
        neox_model, exact_sae(neox_model.cfg.d_model, hook), neox_tokens[:4], hook
    )
    assert quality.spliced_loss == pytest.approx(quality.clean_loss, rel=1e-5)
    assert quality.explained_variance == pytest.approx(1.0, abs=1e-6)
    if quality.zero_ablation_loss > quality.clean_loss:
        assert quality.loss_recovered == pytest.approx(1.0, abs=1e-4)
    else:  # zero-ablation does not hurt this random model: the fraction is undefined
        assert quality.loss_recovered is None
    assert quality.zero_ablation_loss != pytest.approx(quality.clean_loss)


def test_transfer_explained_variance_equals_dense(neox_model, neox_sae, neox_tokens):
    hook = "blocks.1.hook_resid_post"
    tokens = neox_tokens[:4]
    quality = sae_transfer(neox_model, neox_sae, tokens, hook, batch_size=3)
    with torch.no_grad():
        _, cache = neox_model.run_with_cache(tokens, names_filter=hook)
        acts = cache[hook].reshape(-1, neox_model.cfg.d_model).double()
        features = neox_sae.encode(cache[hook].reshape(-1, neox_model.cfg.d_model))
        recon = neox_sae.decode(features).double()
    sse = (recon - acts).square().sum()
    expected = 1 - sse / (acts - acts.mean(0)).square().sum()
    assert quality.explained_variance == pytest.approx(float(expected), rel=1e-6)
    assert quality.mean_l0 == pytest.approx(float((features > 0).sum()) / acts.shape[0])
