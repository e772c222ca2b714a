"""Claims (pytest_qdm/claims): each effect against a dense recomputation with hooks of the
test's own, the null condition, a claim that must fail, and no reference effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qdm.claims import claim_from_dict
from pytest_qdm.claims.base import ClaimContext
from pytest_qdm.claims.check import check_claims
from pytest_qdm.claims.files import read_texts
from pytest_qdm.compress.conditions import Condition, Reference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOOK = "blocks.4.hook_resid_post"


class ZeroedReadout(Condition):
    """A broken compressed model: its unembedding (the logits' read-out) pruned to zero."""

    name = "readout-zeroed"

    def compressed_weights(self, model, layers=None):
        return {"unembed.W_U": torch.zeros_like(model.W_U)}


@pytest.fixture(scope="module")
def texts():
    code = read_texts(EXAMPLES / "claims" / "code.txt", "code")[:8]
    prose = read_texts(EXAMPLES / "claims" / "prose.txt", "prose")[:8]
    return code, prose


@pytest.fixture(scope="module")
def claims(texts):
    code, prose = texts
    tables = [
        dict(kind="steers", id="steer", feature=1111, alpha=3.19, prompts=prose[:6],
             targets=["x", "00", "01"], min_ratio=0.8),
        dict(kind="ablates", id="ablate", features=[1865, 1269, 1917, 1325, 221], texts=code[:6]),
        dict(kind="detects", id="detect", feature=1111, positive=code, negative=prose,
             min_auroc=0.5, max_drop=0.1),
        dict(kind="probe", id="probe", classes={"code": code, "prose": prose}, min_score=0.6,
             test_fraction=0.5),
        dict(kind="steers", id="no-effect", feature=1111, alpha=0.0, prompts=prose[:3],
             targets=["x"]),
    ]  # fmt: skip
    return [claim_from_dict(t) for t in tables]


@pytest.fixture(scope="module")
def report(reference, sae, tokens, claims):
    return check_claims(
        reference, sae, claims, [Reference(), ZeroedReadout()], tokens=tokens[:2], hook=HOOK
    )


def own_target_logprob(model, tokens, targets, add=None):
    """Mean log p(targets) at the last position, with ``add`` added at the read-out by a
    plain torch forward hook on the HookPoint module."""
    handle = None
    if add is not None:
        point = model.blocks[4].hook_resid_post
        handle = point.register_forward_hook(lambda m, i, out: out + add)
    try:
        with torch.no_grad():
            logits = model(tokens, return_type="logits")[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return float(torch.log_softmax(logits.double(), -1)[targets].mean())


def test_steering_effect_matches_dense_recomputation(reference, sae, claims, report):
    steer = claims[0]
    ids = sorted(
        {i for t in steer.targets for i in reference.to_tokens(t, prepend_bos=False)[0].tolist()}
    )
    vector = steer.alpha * sae.W_dec[steer.feature].detach()
    effects = []
    for prompt in steer.prompts:
        tokens = reference.to_tokens(prompt)
        effects.append(
            own_target_logprob(reference, tokens, ids, vector)
            - own_target_logprob(reference, tokens, ids)
        )
    result = report.result("steer", "reference")
    assert result.reference_effect == pytest.approx(np.mean(effects), abs=1e-4)
    assert result.reference_effect > 0


def test_ablation_effect_matches_dense_recomputation(reference, sae, claims, report):
    ablate = claims[1]
    W_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()

    def spliced_loss(tokens, zeroed):
        def splice(module, inputs, out):
            codes = sae.encode(out)
            if zeroed:
                codes[..., ablate.features] = 0
            return codes @ W_dec + b_dec  # the reconstruction, decoded densely here

        handle = reference.blocks[4].hook_resid_post.register_forward_hook(splice)
        try:
            with torch.no_grad():
                logits = reference(tokens, return_type="logits")[0].double()
        finally:
            handle.remove()
        return float(torch.nn.functional.cross_entropy(logits[:-1], tokens[0, 1:]))

    effects = [
        spliced_loss(t, True) - spliced_loss(t, False)
        for t in (reference.to_tokens(text) for text in ablate.texts)
    ]
    assert report.result("ablate", "reference").reference_effect == pytest.approx(
        np.mean(effects), abs=1e-4
    )


def codes_of(reference, sae, text):
    _, cache = reference.run_with_cache(reference.to_tokens(text), names_filter=HOOK)
    return sae.encode(cache[HOOK][0, 1:]).detach().numpy()  # the text's own tokens, no BOS


def test_detection_auroc_matches_sklearn_on_own_scores(reference, sae, claims, report):
    from sklearn.metrics import roc_auc_score

    detect = claims[2]
    pos = [codes_of(reference, sae, t)[:, detect.feature].max() for t in detect.positive]
    neg = [codes_of(reference, sae, t)[:, detect.feature].max() for t in detect.negative]
    expected = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    result = report.result("detect", "reference")
    assert result.reference_effect == pytest.approx(expected, abs=1e-12)


def test_auroc_u_equals_roc_auc_score_with_ties():
    from sklearn.metrics import roc_auc_score

    from pytest_qdm.claims.detects import auroc_u

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 7).astype(float)
    expected = roc_auc_score(np.r_[np.ones(9), np.zeros(7)], np.r_[pos, neg])
    assert auroc_u(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_probe_accuracy_matches_own_fit(reference, sae, claims, report):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    probe = claims[3]
    texts = probe.classes["code"] + probe.classes["prose"]
    labels = np.r_[np.zeros(len(probe.classes["code"])), np.ones(len(probe.classes["prose"]))]
    pooled = np.stack([codes_of(reference, sae, t).mean(0) for t in texts])
    train, test = train_test_split(
        np.arange(len(texts)), test_size=0.5, random_state=0, stratify=labels
    )
    fitted = LogisticRegression(max_iter=2000).fit(pooled[train], labels[train])
    expected = (fitted.predict(pooled[test]) == labels[test]).mean()
    assert report.result("probe", "reference").reference_effect == pytest.approx(expected)


def test_reference_condition_gives_ratio_one_and_unchanged_auroc(report):
    for claim in ("steer", "ablate"):
        result = report.result(claim, "reference")
        assert result.ratio == 1.0 and result.effect == result.reference_effect
    assert report.result("steer", "reference").holds
    detect = report.result("detect", "reference")
    assert detect.effect == detect.reference_effect and detect.detail["auroc_drop"] == 0.0
    assert detect.detail["top_overlap"] == 1.0
    probe = report.result("probe", "reference")
    assert probe.effect == probe.reference_effect


def test_claims_fail_when_the_readout_is_zeroed(report):
    steer = report.result("steer", "readout-zeroed")
    assert steer.status == "fails" and steer.effect == 0.0 and steer.ratio == 0.0
    assert "steer fails on readout-zeroed: ratio 0, >= 0.8 required" in steer.message
    ablate = report.result("ablate", "readout-zeroed")
    assert not ablate.holds and ablate.effect == 0.0
    # the SAE reads before the unembedding: detection is untouched by it
    assert (
        report.result("detect", "readout-zeroed").effect
        == report.result("detect", "reference").effect
    )


def test_no_reference_effect_is_not_a_pass(report):
    for condition in ("reference", "readout-zeroed"):
        result = report.result("no-effect", condition)
        assert result.status == "no reference effect" and not result.holds
        assert "no reference effect" in result.message


def test_model_untouched(reference, report):
    from pytest_qdm.zoo import load_tiny_model

    fresh = load_tiny_model()
    for name, param in fresh.named_parameters():
        assert torch.equal(param, dict(reference.named_parameters())[name]), name


def test_report_json_has_every_field(report):
    data = report.to_json_dict()
    row = data["results"][0]
    assert {"reference_effect", "effect", "ratio", "ci", "holds"} <= set(row)
    assert {c["kind"] for c in data["claims"]} == {"steers", "ablates", "detects", "probe"}


def test_context_tokenizes_once(reference, sae):
    ctx = ClaimContext(sae=sae, hook=HOOK, reference=reference)
    assert ctx.tokens("def f(): pass") is ctx.tokens("def f(): pass")


def test_survives_reads_the_audits_r(reference, sae):
    r = np.full(sae.cfg.d_sae, 0.95)
    r[7], r[9] = 0.5, np.nan
    claims = [
        claim_from_dict(dict(kind="survives", id=name, features=features, min_r=0.9))
        for name, features in (("kept", [1, 2]), ("lost", [1, 7]), ("silent", [9]))
    ]
    report = check_claims(reference, sae, claims, [Reference()], correlations={"reference": r})
    assert report.result("kept", "reference").holds
    lost = report.result("lost", "reference")
    assert lost.status == "fails" and lost.effect == 0.5 and lost.detail["r.7"] == 0.5
    assert report.result("silent", "reference").status == "no reference effect"
