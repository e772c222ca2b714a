"""The scheme we deploy (NF4, as bitsandbytes stores it) and the smaller SAE we ship with it."""

import pytest

import pytest_qdm as qdm


@pytest.fixture(scope="module")
def nf4_audit(qdm_model, qdm_sae, qdm_tokens):
    return qdm.audit(qdm_model, qdm_sae, qdm_tokens, [qdm.NF4()], qdm.AuditConfig(progress=False))


def test_nf4_keeps_the_features_not_just_the_tokens(nf4_audit):
    nf4 = nf4_audit.conditions["nf4-b64"]
    # Token-level agreement is what other papers report; it is dominated by each token's
    # strongest features, so gate on per-feature survival and keep the token view beside it.
    # NF4 (4 bits, one scale per 64 weights) keeps more features than RTN INT4 (one scale
    # per output channel) on the bundled model, but far from all: this bound is the team's
    # release decision, and at 4 bits the bundled model is a fragile one.
    assert nf4.agreement.topk_agreement >= 0.8, nf4.agreement
    assert nf4.summary.survived_pct >= 50, qdm.assertions.condition_report(nf4)


def test_a_quarter_smaller_sae_still_explains_the_nf4_model(
    qdm_model, qdm_sae, qdm_tokens, nf4_audit
):
    sweep = qdm.sae_pruning_sweep(
        qdm_model,
        qdm_sae,
        qdm_tokens.tokens[:32],  # 4,096 tokens
        nf4_audit.reference,
        fractions=(0.25,),
        conditions=[qdm.NF4()],
    )
    full, smaller = sweep.row(0.0, "nf4-b64"), sweep.row(0.25, "nf4-b64")
    assert smaller.explained_variance >= 0.9 * full.explained_variance, sweep.rows
    assert smaller.loss_recovered >= 0.9 * full.loss_recovered, sweep.rows
