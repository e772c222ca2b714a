"""The retrained-SAE baseline on the bundled model: the reference retrain stays the same SAE,
a rotated read-out fails the frozen SAE but is "moved" after retraining, the seed fixes the
result, and bad input is refused in one line before any forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qdm.analyse.retrain import training_classes
from pytest_qdm.analyse.retrain_checks import check_budget
from pytest_qdm.compress.conditions import RTN, Reference
from pytest_qdm.run.audit import audit
from pytest_qdm.run.retrain_phase import retrain_sae
from pytest_qdm.settings import AuditConfig
from pytest_qdm.zoo import TINY_HOOK
from tests.helpers.rotation import RotatedReadout, uniform_rotation

QUIET = AuditConfig(progress=False, token_lenses=False, drilldown_features=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one torch thread is many times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_audit(reference, sae, tokens):
    return audit(reference, sae, tokens[:8], [Reference(), RTN(4)], QUIET)


def test_reference_retrained_from_itself_stays_the_same_sae(
    reference, sae, tokens, reference_audit
):
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    result = retrain_sae(
        reference, sae, tokens[:8], Reference(), budget=1024, batch_tokens=256,
        audit_result=reference_audit, config=QUIET, progress=False,
    )  # fmt: skip
    assert result.trained_tokens == 1024
    assert result.features and all(f.moved for f in result.features)
    assert all(f.match == f.feature for f in result.features)
    assert min(f.decoder_cosine for f in result.features) > 0.99
    assert result.lost == [] and result.bands[0].band == "survived"
    transfer, retrained = result.column("transfer"), result.column("retrained")
    assert retrained.explained_variance == pytest.approx(transfer.explained_variance, abs=0.01)
    assert all(torch.equal(sae.state_dict()[k], v) for k, v in before.items())  # untouched


def test_rotated_readout_fails_the_frozen_sae_and_moves_after_retraining(reference, sae, tokens):
    """Every activation turned by 8.1 degrees (cos 0.99): most features fail under the frozen
    SAE; a short fine-tune recovers the reconstruction, its matched decoders follow the
    known rotation, and part of the failing features come out "moved" (a longer budget
    moves more; docs/retrained-sae.md)."""
    rotation = uniform_rotation(reference.cfg.d_model, cosine=0.99)
    rotated = RotatedReadout(hook=TINY_HOOK, rotation=rotation)
    result = retrain_sae(
        reference, sae, tokens, rotated, budget=32768, batch_tokens=512, lr=1e-3,
        config=QUIET, progress=False,
    )  # fmt: skip
    failing = [f for f in result.features if f.band != "survived"]
    assert len(failing) > 0.4 * len(result.features)  # the frozen encoder misreads them
    transfer, retrained = result.column("transfer"), result.column("retrained")
    assert retrained.explained_variance > transfer.explained_variance + 0.01
    moved = [f for f in failing if f.moved]
    assert len(moved) >= 10
    # each match lies along the reference direction turned by the known rotation
    turned = sae.W_dec.detach().double() @ rotation
    found = result.sae.W_dec.detach().double()
    cosines = [
        float(torch.cosine_similarity(turned[f.feature], found[f.match], 0)) for f in failing
    ]
    assert float(np.median(cosines)) > 0.95


def test_seed_fixes_the_result(reference, sae, tokens, reference_audit):
    def run(seed):
        return retrain_sae(
            reference, sae, tokens[:8], RTN(4), budget=512, batch_tokens=256, init="random",
            seed=seed, audit_result=reference_audit, config=QUIET, progress=False,
        )  # fmt: skip

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first.sae.W_dec, again.sae.W_dec)
    ignore = {"elapsed_seconds"}
    assert first.model_dump(exclude=ignore) == again.model_dump(exclude=ignore)
    assert not torch.equal(first.sae.W_dec, other.sae.W_dec)


def test_budget_below_one_trainer_batch_is_refused():
    with pytest.raises(ValueError, match=r"below the trainer's minimum of one batch \(1024"):
        check_budget(1000)


def test_untrainable_architecture_is_refused_before_any_work(reference, tokens):
    from sae_lens import Transcoder, TranscoderConfig

    transcoder = Transcoder(
        TranscoderConfig(d_in=128, d_sae=16, d_out=128, apply_b_dec_to_input=False)
    )
    transcoder.cfg.metadata.hook_name = TINY_HOOK
    with pytest.raises(ValueError, match="sae_lens cannot train a Transcoder") as error:
        retrain_sae(reference, transcoder, tokens, RTN(4), budget=4096)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="one of .*'topk'"):
        training_classes(transcoder)


def test_condition_not_audited_is_refused(reference, sae, tokens, reference_audit):
    with pytest.raises(ValueError, match=r"condition 'rtn-int6' is not audited"):
        retrain_sae(reference, sae, tokens, RTN(6), budget=4096, audit_result=reference_audit)


def test_small_budget_is_refused_before_the_audit(reference, sae, tokens):
    with pytest.raises(ValueError, match="below the trainer's minimum"):
        retrain_sae(reference, sae, tokens, RTN(4), budget=100)


def test_the_ideal_retrained_sae_of_a_rotation_is_all_moved(reference, sae, tokens):
    """The matching and activation r, on an SAE turned by hand with the known rotation
    (W_enc -> Q^T W_enc, W_dec -> W_dec Q, b_dec -> b_dec Q): every active feature matches
    itself with decoder cosine cos(angle) and r = 1."""
    import copy

    from pytest_qdm.analyse.feature_matching import decoder_cosines, match_features
    from pytest_qdm.analyse.retrain_eval import feature_pass

    rotation = uniform_rotation(reference.cfg.d_model, cosine=0.95)
    turned = copy.deepcopy(sae)
    q = rotation.float()
    with torch.no_grad():
        turned.W_enc.copy_(q.T @ sae.W_enc)
        turned.W_dec.copy_(sae.W_dec @ q)
        turned.b_dec.copy_(sae.b_dec @ q)
    rotated = RotatedReadout(hook=TINY_HOOK, rotation=rotation)
    w_dec = sae.W_dec.detach().numpy()
    cosines = decoder_cosines(w_dec, turned.W_dec.detach().numpy())
    match = match_features(cosines, "hungarian")
    ids = np.arange(len(match))
    assert (match == ids).all() and np.allclose(cosines[ids, match], 0.95, atol=1e-5)
    (fired,), r = feature_pass(
        reference, sae, [turned], rotated, tokens[:4], TINY_HOOK, (ids, match), 4
    )
    live = np.isfinite(r) & (fired > 0)
    assert live.sum() > 100 and np.allclose(r[live], 1.0, atol=1e-3)
