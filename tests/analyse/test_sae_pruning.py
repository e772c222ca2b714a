"""SAE pruning without retraining: importance, slicing, validation and the transfer sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.analyse.sae_pruning import (
    feature_importance,
    kept_features,
    prune_sae,
    sae_pruning_sweep,
    select_features,
)
from pytest_qdm.analyse.transfer import sae_transfer
from pytest_qdm.compress.conditions import Condition
from pytest_qdm.compress.swap import applied
from pytest_qdm.schema.analyses import SaePruningSweep
from pytest_qdm.schema.audit import ReferenceResult
from tests.helpers.factories import exact_sae

HOOK = "blocks.1.hook_resid_post"


def random_sae(kind="standard", d_in=6, d_sae=10, seed=0, **settings):
    """A sae_lens SAE of ``kind`` with every parameter drawn at random (thresholds > 0)."""
    import sae_lens

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
    }
    cls, config_cls = classes[kind]
    config = config_cls(d_in=d_in, d_sae=d_sae, **settings)
    config.metadata.hook_name = HOOK
    config.metadata.model_name = "test-model"
    sae = cls(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.5)
            if name == "threshold":
                param.abs_()
    return sae.eval()


def reference_for(d_sae, seed=0, rms=True, zero=()):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(0.1, 2.0, d_sae)
    mean[list(zero)] = 0.0
    return ReferenceResult(
        n_tokens=100,
        firing_rate=rng.uniform(0, 1, d_sae),
        mean_activation=mean,
        max_activation=mean * 3,
        active=np.ones(d_sae, bool),
        rms_activation=mean * rng.uniform(1.0, 2.0, d_sae) if rms else None,
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def independent_kept(scores, n_remove):
    """Kept ids by a plain sort on (score, id): an independent statement of the rule."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[n_remove:])


@pytest.fixture(scope="module")
def neox_reference(neox_model, neox_sae, neox_tokens):
    config = qdm.AuditConfig(progress=False)
    return qdm.audit(neox_model, neox_sae, neox_tokens[:4], [qdm.Reference()], config).reference


# ----------------------------------------------------------------------------- importance


def test_importance_equals_a_direct_numpy_computation():
    sae, ref = random_sae(), reference_for(10)
    w_dec = sae.W_dec.detach().double().numpy()
    by_mean = np.sqrt((w_dec**2).sum(axis=1)) * ref.mean_activation
    wanda = np.abs(w_dec).sum(axis=1) * ref.rms_activation
    np.testing.assert_allclose(feature_importance(sae, ref), by_mean, rtol=1e-12)
    np.testing.assert_allclose(feature_importance(sae, ref, "wanda"), wanda, rtol=1e-12)
    assert not np.allclose(np.argsort(by_mean), np.argsort(wanda))  # the methods differ here


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("method", ["decoder_norm_x_mean", "wanda"])
def test_pruning_keeps_the_top_features_ties_by_index(method):
    sae, ref = random_sae(d_sae=10), reference_for(10, zero=(1, 4, 7))
    scores = feature_importance(sae, ref, method)
    kept = kept_features(sae, 0.2, ref, method)  # removes round(2.0) = 2 features
    assert kept.tolist() == independent_kept(scores.tolist(), 2)
    assert 1 not in kept and 4 not in kept and 7 in kept  # three tied zeros: lower ids go first
    assert prune_sae(sae, 0.2, ref, method).cfg.metadata.kept_features == kept.tolist()


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "gated"])
def test_pruned_sae_encodes_and_decodes_like_the_kept_columns(kind):
    sae, ref = random_sae(kind, d_sae=12), reference_for(12)
    before = snapshot(sae)
    pruned = prune_sae(sae, 0.25, ref)
    keep = torch.as_tensor(kept_features(sae, 0.25, ref))
    assert type(pruned) is type(sae) and pruned.cfg.d_sae == 9 == len(keep)
    assert pruned.cfg.metadata.hook_name == HOOK and pruned.cfg.metadata.model_name == "test-model"
    assert not pruned.training and pruned.W_enc.dtype == sae.W_enc.dtype
    assert pruned.device == sae.device and pruned.cfg.device == sae.cfg.device
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = sae.encode(x)
        assert (full[:, keep] > 0).any() and (full[:, keep] == 0).any()
        torch.testing.assert_close(pruned.encode(x), full[:, keep], rtol=1e-6, atol=1e-6)
        only_kept = torch.zeros_like(full)
        only_kept[:, keep] = full[:, keep]
        expected = sae.decode(only_kept)
        torch.testing.assert_close(pruned.decode(full[:, keep]), expected, rtol=1e-6, atol=1e-6)
    if kind == "jumprelu":
        assert torch.equal(pruned.threshold, sae.threshold[keep])
    if kind == "gated":
        assert torch.equal(pruned.r_mag, sae.r_mag[keep])
    assert_same_state(sae, before)
    with torch.no_grad():  # the pruned SAE owns its tensors: changing it leaves the user's alone
        for param in pruned.parameters():
            param.add_(1.0)
    assert_same_state(sae, before)


def test_fraction_zero_gives_an_equal_sae():
    sae, ref = random_sae("jumprelu"), reference_for(10)
    same = prune_sae(sae, 0.0, ref)
    assert same is not sae and same.cfg.metadata.kept_features == list(range(10))
    assert_same_state(same, snapshot(sae))
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(same.encode(x), sae.encode(x))
        assert torch.equal(same(x), sae(x))


def test_pruning_twice_records_ids_in_the_original_sae():
    sae = random_sae(d_sae=10)
    first = select_features(sae, [0, 2, 3, 5, 8, 9])
    second = select_features(first, [1, 3, 4])
    assert second.cfg.metadata.kept_features == [2, 5, 8]
    assert torch.equal(second.W_dec, sae.W_dec[[2, 5, 8]])
    assert sae.cfg.metadata.get("kept_features") is None  # the user's metadata is untouched


def test_pruning_draws_no_random_numbers():
    sae, ref = random_sae(), reference_for(10)
    state = torch.get_rng_state()
    prune_sae(sae, 0.5, ref)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fraction", "error", "message"),
    [
        (1.0, ValueError, r"fraction must be in \[0, 1\), got 1.0"),
        (-0.1, ValueError, r"fraction must be in \[0, 1\), got -0.1"),
        (0.96, ValueError, r"fraction=0.96 removes all 10 features; at least one"),
        (True, TypeError, r"fraction must be a number in \[0, 1\), got True"),
        ("0.5", TypeError, r"fraction must be a number.*got '0.5'"),
    ],
)
def test_bad_fraction_is_refused(fraction, error, message):
    with pytest.raises(error, match=message):
        prune_sae(random_sae(), fraction, reference_for(10))


def test_bad_reference_and_method_are_refused():
    sae = random_sae()
    with pytest.raises(ValueError, match=r"cover 8 features, but the SAE has d_sae=10"):
        prune_sae(sae, 0.1, reference_for(8))
    with pytest.raises(ValueError, match=r"unknown importance method 'magic'; expected one of"):
        prune_sae(sae, 0.1, reference_for(10), method="magic")
    with pytest.raises(ValueError, match=r"'wanda' needs reference.rms_activation"):
        prune_sae(sae, 0.1, reference_for(10, rms=False), method="wanda")
    with pytest.raises(TypeError, match=r"reference must be a pytest_qdm ReferenceResult.*dict"):
        prune_sae(sae, 0.1, {"mean_activation": [1.0] * 10})
    nan = reference_for(10).model_copy(update={"mean_activation": np.full(10, np.nan)})
    with pytest.raises(ValueError, match=r"importance is not finite for features \[0, 1"):
        prune_sae(sae, 0.1, nan)


def test_topk_sae_must_keep_k_features():
    sae = random_sae("topk", d_sae=10, k=4)
    with pytest.raises(ValueError, match=r"keeps 3 features, fewer than the TopK SAE's k=4"):
        prune_sae(sae, 0.7, reference_for(10))
    assert prune_sae(sae, 0.6, reference_for(10)).cfg.k == 4


def test_bad_feature_ids_are_refused():
    sae = random_sae()
    with pytest.raises(ValueError, match=r"distinct ids in \[0, 10\)"):
        select_features(sae, [0, 10])
    with pytest.raises(ValueError, match=r"distinct ids in \[0, 10\)"):
        select_features(sae, [3, 3])
    with pytest.raises(TypeError, match=r"1-d array of integer ids"):
        select_features(sae, [0.5, 1.0])


def test_a_config_that_cannot_shrink_is_refused_clearly():
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig

    config = MatryoshkaBatchTopKTrainingSAEConfig(d_in=6, d_sae=10, k=2, matryoshka_widths=[8, 10])
    with pytest.raises(ValueError, match=r"cannot rebuild the MatryoshkaBatchTopKTrainingSAE"):
        select_features(MatryoshkaBatchTopKTrainingSAE(config), [0, 1, 2, 3])


@pytest.fixture
def no_forward(neox_model):
    def forbid(module, args):
        raise RuntimeError("a forward ran before the input was validated")

    # on the embedding: run_with_hooks calls model.forward directly, skipping model-level hooks
    handle = neox_model.embed.register_forward_pre_hook(forbid)
    yield
    handle.remove()


class Counting(Condition):
    """Wraps a condition and counts how often its compressed weights are computed."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def compressed_weights(self, model, layers=None):
        self.calls += 1
        return self.inner.compressed_weights(model, layers)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"fractions": (0.5, 1.0)}, ValueError, r"fraction must be in \[0, 1\), got 1.0"),
        ({"fractions": 0.5}, TypeError, r"fractions must be a sequence of numbers, got 0.5"),
        ({"method": "magic"}, ValueError, r"unknown importance method 'magic'"),
        ({"conditions": ["rtn-int4"]}, TypeError, r"conditions must be qdm.RTN.*'rtn-int4'"),
        ({"conditions": [qdm.Reference()]}, ValueError, r"not 'reference'.*\['reference'\]"),
        ({"conditions": [qdm.RTN(4), qdm.RTN(4)]}, ValueError, r"duplicates \['rtn-int4'\]"),
        ({"hook": "blocks.9.hook_resid_post"}, ValueError, r"'blocks.9.hook_resid_post' is not"),
    ],
)
def test_bad_sweep_input_is_refused_before_any_forward(
    neox_model, neox_sae, neox_tokens, neox_reference, no_forward, settings, error, message
):
    with pytest.raises(error, match=message):
        sae_pruning_sweep(neox_model, neox_sae, neox_tokens[:2], neox_reference, **settings)


def test_sweep_reference_checks_run_before_any_forward(
    neox_model, neox_sae, neox_tokens, neox_reference, no_forward
):
    tokens = neox_tokens[:2]
    no_rms = neox_reference.model_copy(update={"rms_activation": None})
    with pytest.raises(ValueError, match=r"'wanda' needs reference.rms_activation"):
        sae_pruning_sweep(neox_model, neox_sae, tokens, no_rms, method="wanda")
    with pytest.raises(ValueError, match=r"cover 10 features, but the SAE has d_sae=128"):
        sae_pruning_sweep(neox_model, neox_sae, tokens, reference_for(10))
    with pytest.raises(RuntimeError, match="a forward ran"):  # the guard itself works
        sae_pruning_sweep(neox_model, neox_sae, tokens, neox_reference)


# ----------------------------------------------------------------------------- sweep


def test_sweep_measures_every_fraction_and_condition(
    neox_model, neox_sae, neox_tokens, neox_reference
):
    tokens, rtn = neox_tokens[:4], Counting(qdm.RTN(4))
    model_before, sae_before = snapshot(neox_model), snapshot(neox_sae)
    sweep = sae_pruning_sweep(
        neox_model, neox_sae, tokens, neox_reference, (0.25, 0.5), [rtn], batch_size=3
    )
    assert rtn.calls == 1  # compressed weights once, not once per fraction
    assert_same_state(neox_model, model_before)
    assert_same_state(neox_sae, sae_before)
    assert [(r.fraction, r.condition) for r in sweep.rows] == [
        (f, c) for f in (0.0, 0.25, 0.5) for c in ("reference", "rtn-int4")
    ]
    assert [sweep.row(f).n_features_kept for f in (0, 0.25, 0.5)] == [128, 96, 64]
    assert sweep.method == "decoder_norm_x_mean" and sweep.hook_name == HOOK

    def matches(row, quality):
        for key in ("explained_variance", "mse", "mean_l0", "spliced_loss", "loss_recovered"):
            expected = getattr(quality, key)  # loss_recovered is None on this random model
            close = None if expected is None else pytest.approx(expected, rel=1e-9)
            assert getattr(row, key) == close, key

    matches(sweep.row(0.0), sae_transfer(neox_model, neox_sae, tokens, HOOK, 3))
    half = prune_sae(neox_sae, 0.5, neox_reference)
    with applied(neox_model, qdm.RTN(4).compressed_weights(neox_model)):
        matches(sweep.row(0.0, "rtn-int4"), sae_transfer(neox_model, neox_sae, tokens, HOOK, 3))
        matches(sweep.row(0.5, "rtn-int4"), sae_transfer(neox_model, half, tokens, HOOK, 3))
    assert sweep.row(0.0, "rtn-int4").mse != sweep.row(0.0).mse

    assert SaePruningSweep.model_validate_json(sweep.model_dump_json()) == sweep
    with pytest.raises(KeyError, match=r"fraction=0.3, condition='reference'"):
        sweep.row(0.3)


@pytest.mark.parametrize("method", ["decoder_norm_x_mean", "wanda"])
def test_pruning_the_least_important_features_costs_least(neox_model, neox_tokens, method):
    sae = exact_sae(neox_model.cfg.d_model, HOOK)
    config = qdm.AuditConfig(progress=False)
    reference = qdm.audit(neox_model, sae, neox_tokens[:4], [qdm.Reference()], config).reference
    held_out = neox_tokens[4:8]
    fractions = (0.25, 0.5, 0.75)
    sweep = sae_pruning_sweep(neox_model, sae, held_out, reference, fractions, method=method)
    ev = [sweep.row(f).explained_variance for f in (0.0, *fractions)]
    assert ev[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a >= b for a, b in zip(ev, ev[1:], strict=False)) and ev[-1] < ev[0]
    top_first = np.argsort(-feature_importance(sae, reference, method), kind="stable")
    without_top = select_features(sae, np.sort(top_first[64:]))  # the MOST important half gone
    worst = sae_transfer(neox_model, without_top, held_out, HOOK).explained_variance
    assert sweep.row(0.5).explained_variance > worst + 0.2


# ----------------------------------------------------------------------------- bundled model


def test_importance_pruning_beats_random_on_the_bundled_model():
    tiny = qdm.load_preset("tiny", second_sae=False)
    tokens = tiny.tokens(4096).tokens
    fit, held_out = tokens[: len(tokens) // 2], tokens[len(tokens) // 2 :]
    config = qdm.AuditConfig(progress=False)
    reference = qdm.audit(tiny.model, tiny.sae, fit, [qdm.Reference()], config).reference
    sweep = sae_pruning_sweep(tiny.model, tiny.sae, held_out, reference, fractions=(0.25,))
    d_sae = tiny.sae.cfg.d_sae
    keep = np.sort(np.random.default_rng(0).choice(d_sae, d_sae - round(0.25 * d_sae), False))
    hook = tiny.sae.cfg.metadata.hook_name
    random_ev = sae_transfer(tiny.model, select_features(tiny.sae, keep), held_out, hook)
    full, pruned = sweep.row(0.0).explained_variance, sweep.row(0.25).explained_variance
    print(f"tiny EV: unpruned {full:.4f}, 25% by importance {pruned:.4f}, ", end="")
    print(f"25% random {random_ev.explained_variance:.4f}")
    assert pruned > 0.8 * full
    assert random_ev.explained_variance < pruned
