"""Token-level lenses and SAE transfer quality against direct dense computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.analyse.transfer import sae_transfer
from pytest_qdm.stream.lenses import AgreementSums
from tests.helpers.factories import exact_sae


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(200, 40, generator=g) - 0.5)
    y = torch.relu(x + 0.3 * torch.randn(200, 40, generator=g) - 0.05)
    a = torch.randn(200, 8, generator=g)
    b = a + 0.1 * torch.randn(200, 8, generator=g)
    return x, y, a, b


def dense_sample_correlation(xs: np.ndarray, ys: np.ndarray) -> float:
    corr = [
        np.corrcoef(xs[t], ys[t])[0, 1]
        for t in range(len(xs))
        if xs[t].std() > 0 and ys[t].std() > 0
    ]
    return float(np.mean(corr))


def dense_topk(xs: np.ndarray, ys: np.ndarray, k: int) -> tuple[float, int]:
    overlaps = []
    for t in range(len(xs)):
        if (xs[t] > 0).sum() >= k:
            top_x = set(np.argsort(-xs[t], kind="stable")[:k])
            top_y = {i for i in np.argsort(-ys[t], kind="stable")[:k] if ys[t, i] > 0}
            overlaps.append(len(top_x & top_y) / k)
    return float(np.mean(overlaps)), len(overlaps)


def dense_procrustes(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.linalg import orthogonal_procrustes

    rotation, _ = orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ rotation - b) / np.linalg.norm(b))


def test_sample_correlation_and_topk_equal_direct_computation(pair):
    x, y, a, b = pair
    result = AgreementSums.of_batch(x, y, a, b, k=5).result(5)
    xs, ys = x.double().numpy(), y.double().numpy()
    assert result.sample_correlation == pytest.approx(dense_sample_correlation(xs, ys), abs=1e-12)
    expected, n_tokens = dense_topk(xs, ys, 5)
    assert result.n_topk_tokens == n_tokens
    assert result.topk_agreement == pytest.approx(expected, abs=1e-12)


def test_procrustes_error_equals_scipys_orthogonal_procrustes(pair):
    _, _, a, b = pair
    x = torch.ones(a.shape[0], 4)
    result = AgreementSums.of_batch(x, x, a, b, k=2).result(2)
    expected = dense_procrustes(a.double().numpy(), b.double().numpy())
    assert result.procrustes_aligned_error == pytest.approx(expected, rel=1e-9)
    assert result.procrustes_aligned_error < result.unaligned_error


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
    for key, value in whole.result(3).model_dump().items():
        assert getattr(merged.result(3), key) == pytest.approx(value, rel=1e-12), key


def audit_agreement(model, sae, tokens, condition, **settings):
    config = qdm.AuditConfig(progress=False, **settings)
    return qdm.audit(model, sae, tokens, [condition], config).conditions[condition.name]


@pytest.mark.parametrize("block_rows", [None, 64])  # one encode block per batch, or several
def test_engine_token_lenses_equal_a_dense_computation(
    neox_model, neox_sae, neox_tokens, monkeypatch, block_rows
):
    from pytest_qdm.compress.swap import applied
    from pytest_qdm.stream import engine as engine

    if block_rows:
        monkeypatch.setitem(engine.ENCODE_BLOCK_ELEMENTS, "cpu", block_rows * neox_sae.cfg.d_sae)
    hook, k = "blocks.1.hook_resid_post", 4
    result = audit_agreement(neox_model, neox_sae, neox_tokens, qdm.RTN(3), top_k=k, batch_size=5)
    with torch.no_grad():
        _, ref = neox_model.run_with_cache(neox_tokens, names_filter=hook)
        with applied(neox_model, qdm.RTN(3).compressed_weights(neox_model)):
            _, comp = neox_model.run_with_cache(neox_tokens, names_filter=hook)
    a = ref[hook].reshape(-1, neox_model.cfg.d_model)
    b = comp[hook].reshape(-1, neox_model.cfg.d_model)
    xs, ys = (neox_sae.encode(t).detach().double().numpy() for t in (a, b))
    agreement = result.agreement
    assert agreement.k == k and agreement.n_correlated_tokens == xs.shape[0]
    assert agreement.sample_correlation == pytest.approx(dense_sample_correlation(xs, ys), abs=1e-9)
    expected, n_tokens = dense_topk(xs, ys, k)
    assert (agreement.topk_agreement, agreement.n_topk_tokens) == (
        pytest.approx(expected),
        n_tokens,
    )
    a64, b64 = a.double().numpy(), b.double().numpy()
    assert agreement.procrustes_aligned_error == pytest.approx(dense_procrustes(a64, b64), rel=1e-6)
    unaligned = np.linalg.norm(a64 - b64) / np.linalg.norm(b64)
    assert agreement.unaligned_error == pytest.approx(unaligned, rel=1e-6)
    assert 0 < agreement.procrustes_aligned_error < agreement.unaligned_error


def test_reference_condition_agrees_perfectly(neox_model, neox_sae, neox_tokens):
    agreement = audit_agreement(neox_model, neox_sae, neox_tokens[:4], qdm.Reference()).agreement
    assert agreement.sample_correlation == pytest.approx(1.0, abs=1e-12)
    assert agreement.topk_agreement == 1.0 and agreement.n_topk_tokens > 0
    assert agreement.procrustes_aligned_error == pytest.approx(0.0, abs=1e-6)
    assert agreement.unaligned_error == 0.0


def test_token_lenses_can_be_switched_off(neox_model, neox_sae, neox_tokens):
    result = audit_agreement(
        neox_model, neox_sae, neox_tokens[:4], qdm.RTN(4), token_lenses=False, top_k=10**6
    )
    assert result.agreement is None


def test_top_k_wider_than_the_sae_is_refused_before_any_forward(neox_model, neox_sae, neox_tokens):
    def forbid(module, args):
        raise AssertionError("a forward ran before the input was validated")

    handle = neox_model.embed.register_forward_pre_hook(forbid)
    try:
        with pytest.raises(ValueError, match=r"top_k=129 exceeds the SAE's 128 features"):
            audit_agreement(neox_model, neox_sae, neox_tokens, qdm.RTN(4), top_k=129)
    finally:
        handle.remove()


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


def test_engine_agreement_of_merged_shards_equals_one_pass(neox_model, neox_sae, neox_tokens):
    from pytest_qdm.run.audit import prepare_conditions
    from pytest_qdm.stream.inputs import PassSpec
    from pytest_qdm.stream.passes import run_pass

    conditions, hook = [qdm.RTN(3)], "blocks.1.hook_resid_post"
    config = qdm.AuditConfig(progress=False, top_k=4)
    prepared = prepare_conditions(neox_model, conditions, hook, compute_loss=False)

    def run(tokens):
        state = run_pass(PassSpec(neox_model, neox_sae, conditions, prepared, hook, config), tokens)
        return state.agreement["rtn-int3"]

    whole = run(neox_tokens).result(4)
    merged = run(neox_tokens[:5]).merge(run(neox_tokens[5:11])).merge(run(neox_tokens[11:]))
    for key, value in whole.model_dump().items():
        assert getattr(merged.result(4), key) == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("model_fixture", ["neox_model", "gemma_like_model"])
@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
def test_resumed_forward_gives_the_losses_of_a_replacing_hook(
    request, monkeypatch, model_fixture, hook
):
    """At residual hooks the spliced and zero-ablated forwards resume after the hook;
    they must equal full forwards with a hook that replaces the activation."""
    from pytest_qdm.analyse import transfer as transfer
    from tests.helpers.factories import fitted_sae, random_tokens

    model = request.getfixturevalue(model_fixture)
    sae, tokens = fitted_sae(model, hook), random_tokens(model, n_sequences=4)
    assert transfer.resume_layer(hook) is not None
    resumed = sae_transfer(model, sae, tokens, hook, batch_size=3)
    monkeypatch.setattr(transfer, "resume_layer", lambda hook: None)
    replaced = sae_transfer(model, sae, tokens, hook, batch_size=3)
    for key, value in replaced.model_dump().items():
        expected = value if value is None else pytest.approx(value, rel=1e-5)
        assert getattr(resumed, key) == expected, key
    assert resumed.zero_ablation_loss != pytest.approx(resumed.clean_loss)


def test_transfer_riding_on_the_chunked_perplexity_forward_equals_its_own(
    neox_model, neox_sae, neox_tokens
):
    from pytest_qdm.analyse.perplexity import chunked_perplexity
    from pytest_qdm.analyse.transfer import TransferSums

    hook, tokens = "blocks.1.hook_resid_post", neox_tokens[:6]
    alone = sae_transfer(neox_model, neox_sae, tokens, hook, batch_size=4)
    sums = TransferSums(neox_model, neox_sae, hook)
    ppl = chunked_perplexity(neox_model, tokens, bos_in_tokens=False, batch_size=4, observer=sums)
    riding = sums.result()
    assert riding.clean_loss == pytest.approx(ppl.mean_nll, rel=1e-12)
    for key, value in alone.model_dump().items():
        expected = value if value is None else pytest.approx(value, rel=1e-5)
        assert getattr(riding, key) == expected, key
