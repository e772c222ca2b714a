"""The SAE fit precheck: accepts an SAE on its own model and layer, rejects it elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pytest_qdm.analyse.sae_fit import check_sae_fit, require_sae_fit
from pytest_qdm.schema.analyses import SaeFit
from pytest_qdm.stream.hooks import hook_activations
from tests.helpers.factories import build_model, neox_config, random_tokens

HOOK = "blocks.1.hook_resid_post"


def pca_sae(model, hook_name, k=16, normalize_activations="none"):
    """A sae_lens StandardSAE that reconstructs the top-``k`` principal subspace of
    ``model``'s activations at ``hook_name``: features +v_j and -v_j (ReLU keeps one of
    each pair), b_dec = the mean. It fits its own layer and nothing else, like a real SAE."""
    from sae_lens import StandardSAE, StandardSAEConfig

    acts = hook_activations(model, random_tokens(model, n_sequences=64, seed=3), hook_name)
    mean = acts.mean(0)
    directions = torch.linalg.svd(acts - mean, full_matrices=False).Vh[:k]
    config = StandardSAEConfig(
        d_in=model.cfg.d_model, d_sae=2 * k, normalize_activations=normalize_activations
    )
    config.metadata.hook_name = hook_name
    sae = StandardSAE(config)
    decoder = torch.cat([directions, -directions])
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
        sae.W_enc.copy_(decoder.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean)
    return sae.eval()


@pytest.fixture(scope="module")
def own_sae(neox_model):
    return pca_sae(neox_model, HOOK)


def snapshot(module):
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def assert_same(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)


def test_accepts_sae_on_its_own_model_and_layer(neox_model, own_sae, neox_tokens):
    model_before, sae_before = snapshot(neox_model), snapshot(own_sae)
    fit = check_sae_fit(neox_model, own_sae, neox_tokens)
    assert fit.ok and fit.hook_name == HOOK
    assert fit.explained_variance > 0.6
    assert fit.n_tokens == neox_tokens.numel() == 512
    assert fit.d_sae == 32 and 0 < fit.mean_l0 <= 16
    assert 0.8 < fit.norm_ratio <= 1.0 and fit.activation_norm > 0 and fit.b_dec_norm > 0
    assert "SAE fits" in fit.reason
    assert SaeFit.model_validate_json(fit.model_dump_json()) == fit
    assert require_sae_fit(neox_model, own_sae, neox_tokens) == fit
    assert_same(neox_model, model_before)
    assert_same(own_sae, sae_before)
    assert not any(hook.fwd_hooks for hook in neox_model.hook_dict.values())


@pytest.mark.parametrize("hook_name", ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"])
def test_rejects_wrong_layer(neox_model, own_sae, neox_tokens, hook_name):
    fit = check_sae_fit(neox_model, own_sae, neox_tokens, hook_name=hook_name)
    assert not fit.ok and fit.explained_variance < 0.5
    assert f"made for {HOOK!r}" in fit.reason
    with pytest.raises(ValueError, match="does not fit.*explained variance.*Wrong layer"):
        require_sae_fit(neox_model, own_sae, neox_tokens, hook_name=hook_name)


def test_rejects_model_with_other_weights(own_sae, neox_tokens):
    other = build_model(neox_config(seed=1))
    fit = check_sae_fit(other, own_sae, neox_tokens)
    assert not fit.ok and fit.explained_variance < 0.5
    with pytest.raises(ValueError, match=r"Processed weights \(fold_ln"):
        require_sae_fit(other, own_sae, neox_tokens)


def test_threshold_and_token_cap(neox_model, own_sae, neox_tokens):
    strict = check_sae_fit(neox_model, own_sae, neox_tokens, min_explained_variance=0.99)
    assert not strict.ok and strict.min_explained_variance == 0.99
    lenient = check_sae_fit(
        neox_model,
        own_sae,
        neox_tokens,
        hook_name="blocks.2.hook_resid_post",
        min_explained_variance=-10,
    )
    assert lenient.ok
    capped = check_sae_fit(neox_model, own_sae, SimpleNamespace(tokens=neox_tokens), max_tokens=40)
    assert capped.n_tokens == 40  # a TokenSet-like object works too


def test_layer_norm_sae_left_unmodified(neox_model, neox_tokens):
    sae = pca_sae(neox_model, HOOK, normalize_activations="layer_norm")
    before, attributes = snapshot(sae), set(vars(sae))
    fit = check_sae_fit(neox_model, sae, neox_tokens)
    assert fit.n_tokens == 512
    assert_same(sae, before)
    assert set(vars(sae)) == attributes  # no ln_mu / ln_std left behind


def test_bad_inputs(neox_model, own_sae, neox_tokens):
    with pytest.raises(TypeError, match="LongTensor"):
        check_sae_fit(neox_model, own_sae, neox_tokens[0])
    with pytest.raises(ValueError, match="no hook named"):
        check_sae_fit(neox_model, own_sae, neox_tokens, hook_name="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="max_tokens"):
        check_sae_fit(neox_model, own_sae, neox_tokens, max_tokens=0)
    with pytest.raises(ValueError, match=r"shape \(256,\) but the SAE expects d_in=64"):
        check_sae_fit(neox_model, own_sae, neox_tokens, hook_name="blocks.0.mlp.hook_post")


def test_massive_activations_do_not_decide_the_fit():
    """A few attention-sink tokens with 100x the norm dominate sum ||x - mean||^2: an SAE
    that reconstructs only them would pass on all tokens. They are left out and counted."""
    import torch

    from pytest_qdm.analyse.sae_fit import typical_tokens

    acts = torch.randn(256, 16)
    acts[::64] *= 100  # four sinks
    mask = typical_tokens(acts)
    assert int((~mask).sum()) == 4 and bool(mask[1:64].all())
    # an "SAE" that returns the sinks exactly and zero elsewhere: EV over all tokens is high,
    # over the typical tokens it is about 0 (it explains nothing there)
    x_hat = torch.where(mask[:, None], torch.zeros_like(acts), acts)
    ev_all = 1 - ((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    typical = acts[mask]
    ev_typical = 1 - (typical**2).sum() / ((typical - typical.mean(0)) ** 2).sum()
    assert ev_all > 0.99 and ev_typical < 0.05


def test_fit_counts_and_leaves_out_massive_tokens(monkeypatch, neox_model):
    import torch

    import pytest_qdm.analyse.sae_fit as sae_fit
    from tests.helpers.factories import exact_sae

    acts = torch.randn(256, 16)
    acts[::64] *= 100
    monkeypatch.setattr(sae_fit, "hook_activations", lambda model, tokens, hook: acts)
    tokens = torch.zeros(2, 128, dtype=torch.long)
    fit = sae_fit.check_sae_fit(neox_model, exact_sae(16, "blocks.0.hook_resid_post"), tokens)
    assert (fit.n_massive_tokens, fit.n_tokens) == (4, 252)
    assert "4 massive-activation tokens" in fit.reason and fit.explained_variance > 0.999
