"""The one-pass audit on tiny models: the null, monotonicity, purity, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.run.audit import finalize, prepare_conditions, token_summary
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.passes import run_pass
from tests.helpers.factories import build_model, fitted_sae, neox_config

QUIET = qdm.AuditConfig(progress=False)
SWEEP = [qdm.RTN(bits) for bits in (8, 7, 6, 5, 4)]


@pytest.fixture(scope="module")
def sweep(neox_model, neox_sae, neox_tokens):
    return qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.Reference(), *SWEEP], QUIET)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reference_null_every_active_feature_has_r_one(sweep):
    null = sweep.conditions["reference"]
    active = sweep.reference.active
    assert active.sum() > 50
    np.testing.assert_allclose(null.correlation[active], 1.0, atol=1e-6)
    assert null.summary.damaged_count == 0 and null.summary.survived_pct == 100.0
    assert np.isnan(null.correlation[~active]).all()


def test_survival_is_non_increasing_from_int8_to_int4(sweep):
    survived = [sweep.conditions[c.name].summary.survived_pct for c in SWEEP]
    mean_r = [sweep.conditions[c.name].summary.mean_correlation for c in SWEEP]
    assert survived == sorted(survived, reverse=True)
    assert mean_r == sorted(mean_r, reverse=True)
    assert survived[0] > survived[-1]


def test_audit_leaves_model_and_sae_bit_identical(neox_model, neox_sae, neox_tokens):
    model_before, sae_before = snapshot(neox_model), snapshot(neox_sae)
    qdm.audit(
        neox_model,
        neox_sae,
        neox_tokens[:4],
        [qdm.RTN(3), qdm.MagnitudePrune(0.5)],
        QUIET,
    )
    assert_unchanged(neox_model, model_before)
    assert_unchanged(neox_sae, sae_before)


def test_audit_that_raises_midway_leaves_model_untouched(neox_model, neox_sae, neox_tokens):
    model_before, sae_before = snapshot(neox_model), snapshot(neox_sae)
    calls = {"n": 0}

    def explode_on_second_condition(activation, hook):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")

    neox_model.add_hook("blocks.0.hook_resid_post", explode_on_second_condition)
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(4), qdm.RTN(2)], QUIET)
    finally:
        neox_model.reset_hooks()
    assert_unchanged(neox_model, model_before)
    assert_unchanged(neox_sae, sae_before)


def test_same_inputs_give_identical_numbers(neox_model, neox_sae, neox_tokens):
    runs = [qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(5)], QUIET) for _ in range(2)]
    assert runs[0].to_json() == runs[1].to_json()


def test_shards_merged_equal_one_pass(neox_model, neox_sae, neox_tokens):
    conditions = [qdm.RTN(4), qdm.MagnitudePrune(0.3)]
    hook = "blocks.1.hook_resid_post"
    prepared = prepare_conditions(neox_model, conditions, hook, compute_loss=False)

    def run(tokens):
        return run_pass(PassSpec(neox_model, neox_sae, conditions, prepared, hook, QUIET), tokens)

    whole = run(neox_tokens)
    merged = run(neox_tokens[:5]).merge(run(neox_tokens[5:11])).merge(run(neox_tokens[11:]))
    summary = token_summary(neox_tokens)
    one = finalize(whole, conditions, hook, summary, QUIET)
    shards = finalize(merged, conditions, hook, summary, QUIET)
    for name in one.conditions:
        np.testing.assert_allclose(
            shards.conditions[name].correlation,
            one.conditions[name].correlation,
            atol=1e-12,
        )
    np.testing.assert_allclose(shards.reference.mean_activation, one.reference.mean_activation)


def test_batch_size_does_not_change_results(neox_model, neox_sae, neox_tokens):
    a = qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(4)], QUIET)
    b = qdm.audit(
        neox_model,
        neox_sae,
        neox_tokens,
        [qdm.RTN(4)],
        QUIET.model_copy(update={"batch_size": 3}),
    )
    np.testing.assert_allclose(
        a.conditions["rtn-int4"].correlation,
        b.conditions["rtn-int4"].correlation,
        atol=1e-9,
    )


def test_correlations_equal_a_dense_computation(neox_model, neox_sae, neox_tokens):
    from pytest_qdm.compress.swap import applied

    hook = "blocks.1.hook_resid_post"
    result = qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(4)], QUIET)
    with torch.no_grad():
        _, ref = neox_model.run_with_cache(neox_tokens, names_filter=hook)
        with applied(neox_model, qdm.RTN(4).compressed_weights(neox_model)):
            _, comp = neox_model.run_with_cache(neox_tokens, names_filter=hook)
        x = neox_sae.encode(ref[hook]).reshape(-1, neox_sae.cfg.d_sae).double().numpy()
        y = neox_sae.encode(comp[hook]).reshape(-1, neox_sae.cfg.d_sae).double().numpy()
    active = (x > 0).mean(0) > 1e-3
    expected = np.array([np.corrcoef(x[:, i], y[:, i])[0, 1] for i in np.flatnonzero(active)])
    np.testing.assert_array_equal(result.reference.active, active)
    np.testing.assert_allclose(
        result.conditions["rtn-int4"].correlation[active], expected, atol=1e-6
    )


def test_loss_from_the_same_forward_matches_the_model(neox_model, neox_sae, neox_tokens):
    config = QUIET.model_copy(update={"compute_loss": True})
    result = qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.Reference()], config)
    with torch.no_grad():
        expected = neox_model(neox_tokens, return_type="loss").item()
    assert result.reference_mean_nll == pytest.approx(expected, rel=1e-5)
    assert result.conditions["reference"].mean_nll == pytest.approx(expected, rel=1e-5)


def test_result_round_trips_through_json(sweep):
    again = qdm.AuditResult.from_json(sweep.to_json())
    assert again.schema_version == 1
    assert again.conditions.keys() == sweep.conditions.keys()
    for name, cond in sweep.conditions.items():
        np.testing.assert_array_equal(again.conditions[name].correlation, cond.correlation)
        assert again.conditions[name].summary == cond.summary
    np.testing.assert_array_equal(again.reference.active, sweep.reference.active)
    assert again.to_json() == sweep.to_json()


def test_bands_partition_the_active_features(sweep):
    for cond in sweep.conditions.values():
        s = cond.summary
        assert s.survived_count + s.degraded_count + s.damaged_count == s.n_active
        assert s.survived_pct + s.degraded_pct + s.damaged_pct == pytest.approx(100.0)


def test_thresholds_are_configurable(neox_model, neox_sae, neox_tokens):
    strict = QUIET.model_copy(update={"survival_threshold": 0.999, "damage_threshold": 0.99})
    default = qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(4)], QUIET)
    tight = qdm.audit(neox_model, neox_sae, neox_tokens, [qdm.RTN(4)], strict)
    assert (
        tight.conditions["rtn-int4"].summary.survived_pct
        < default.conditions["rtn-int4"].summary.survived_pct
    )


def test_candidate_condition_audits_a_users_compressed_model(neox_model, neox_sae, neox_tokens):
    candidate_model = build_model(neox_config())
    candidate_model.load_state_dict(neox_model.state_dict())
    with torch.no_grad():
        for name, tensor in qdm.RTN(4).compressed_weights(candidate_model).items():
            dict(candidate_model.named_parameters())[name].copy_(tensor)
    result = qdm.audit(
        neox_model,
        neox_sae,
        neox_tokens,
        [qdm.RTN(4), qdm.Candidate(candidate_model, "mine")],
        QUIET,
    )
    np.testing.assert_allclose(
        result.conditions["mine"].correlation,
        result.conditions["rtn-int4"].correlation,
        atol=1e-12,
    )


# Assertions --------------------------------------------------------------------------


def test_assert_feature_survival_passes_and_fails_with_a_readable_report(sweep):
    qdm.assert_feature_survival(result=sweep, bits=8, min_survived=0.5)
    with pytest.raises(AssertionError) as error:
        qdm.assert_feature_survival(result=sweep, bits=4, min_survived=1.0)
    message = str(error.value)
    assert "feature survival below the gate at INT4" in message
    assert "100.0% required" in message and "worst features: #" in message
    assert "damaged" in message and "degraded" in message


def test_assert_feature_survival_runs_the_audit_itself(neox_model, neox_sae, neox_tokens):
    cond = qdm.assert_feature_survival(
        neox_model,
        neox_sae,
        bits=8,
        min_survived=0.5,
        tokens=neox_tokens[:4],
        config=QUIET,
    )
    assert cond.name == "rtn-int8"


def test_assert_max_damaged(sweep):
    qdm.assert_max_damaged(result=sweep, bits=8, max_damaged=0.0)
    worst = sweep.conditions["rtn-int4"].summary.damaged_pct
    if worst:
        with pytest.raises(AssertionError, match="too many damaged features at INT4"):
            qdm.assert_max_damaged(result=sweep, bits=4, max_damaged=0.0)


def test_assert_features_survive_names_the_failing_features(sweep):
    cond = sweep.conditions["rtn-int4"]
    (worst_id, worst_r), *_ = cond.worst_features(1)
    best_id = int(np.nanargmax(cond.correlation))
    qdm.assert_features_survive([best_id], bits=4, min_correlation=0.0, result=sweep)
    with pytest.raises(AssertionError, match=f"#{worst_id}: r="):
        qdm.assert_features_survive(
            [best_id, worst_id], bits=4, min_correlation=worst_r + 1e-6, result=sweep
        )
    inactive = int(np.flatnonzero(~sweep.reference.active)[0])
    with pytest.raises(AssertionError, match="not active in the reference"):
        qdm.assert_features_survive([inactive], bits=4, result=sweep)


def test_assertion_argument_errors(sweep):
    with pytest.raises(ValueError, match="no condition 'rtn-int3'"):
        qdm.assert_feature_survival(result=sweep, bits=3)
    with pytest.raises(ValueError, match=r"min_survived must lie in \[0, 1\]"):
        qdm.assert_feature_survival(result=sweep, bits=6, min_survived=60)
    with pytest.raises(ValueError, match="outside the SAE"):
        qdm.assert_features_survive([10**6], result=sweep)
    with pytest.raises(ValueError, match="pass result=AuditResult or both model and sae"):
        qdm.assert_feature_survival(bits=6)


# Bad input: clear errors before any forward pass --------------------------------------


class NoForward:
    """Fails the test if a forward pass starts."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def forbid(*args, **kwargs):
            raise AssertionError("a forward pass ran before validation")

        self.handle = self.model.embed.register_forward_pre_hook(forbid)

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"config": qdm.AuditConfig(hook_name="blocks.9.hook_resid_post")},
            ValueError,
            "not in the model",
        ),
        ({"tokens": torch.zeros(8, dtype=torch.long)}, TypeError, "2-D integer tensor"),
        ({"tokens": torch.zeros(2, 4)}, TypeError, "2-D integer tensor"),
        (
            {"tokens": torch.zeros(0, 4, dtype=torch.long)},
            ValueError,
            "tokens is empty",
        ),
        (
            {"tokens": torch.full((2, 4), 97)},
            ValueError,
            r"token ids must lie in \[0, 97\)",
        ),
        (
            {"tokens": torch.zeros(1, 64, dtype=torch.long)},
            ValueError,
            "exceed the model's context",
        ),
        ({"tokens": [[1, 2]]}, TypeError, "torch.LongTensor"),
        (
            {"conditions": [qdm.RTN(4, group_size=48)]},
            ValueError,
            "group_size=48 does not divide",
        ),
        ({"conditions": [qdm.RTN(4), qdm.RTN(4)]}, ValueError, "names must be unique"),
        ({"conditions": []}, ValueError, "no conditions given"),
        ({"conditions": ["rtn-int4"]}, TypeError, "conditions must be"),
    ],
)
def test_bad_input_is_refused_before_any_forward(
    neox_model, neox_sae, neox_tokens, kwargs, error, match
):
    arguments = {
        "tokens": neox_tokens,
        "conditions": [qdm.RTN(4)],
        "config": QUIET,
        **kwargs,
    }
    with NoForward(neox_model), pytest.raises(error, match=match):
        qdm.audit(neox_model, neox_sae, **arguments)


def test_sae_width_mismatch_is_refused(neox_model, neox_tokens):
    wrong = fitted_sae(build_model(neox_config(d_model=32, d_head=8)), "blocks.1.hook_resid_post")
    with (
        NoForward(neox_model),
        pytest.raises(ValueError, match="SAE d_in=32 but the activation"),
    ):
        qdm.audit(neox_model, wrong, neox_tokens, [qdm.RTN(4)], QUIET)


def test_sae_without_hook_name_needs_one_in_the_config(neox_model, neox_sae, neox_tokens):
    import copy

    sae = copy.deepcopy(neox_sae)
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match="pass AuditConfig\\(hook_name="):
        qdm.audit(neox_model, sae, neox_tokens, [qdm.RTN(4)], QUIET)
    config = QUIET.model_copy(update={"hook_name": "blocks.1.hook_resid_post"})
    assert (
        qdm.audit(neox_model, sae, neox_tokens[:2], [qdm.RTN(4)], config).hook_name
        == "blocks.1.hook_resid_post"
    )


def test_non_finite_activations_name_the_condition_and_batch(neox_model, neox_sae, neox_tokens):
    broken = build_model(neox_config())
    broken.load_state_dict(neox_model.state_dict())
    with torch.no_grad():
        broken.blocks[0].mlp.W_out[0, 0] = float("nan")
    conditions = [qdm.RTN(8), qdm.Candidate(broken, "nan-checkpoint")]
    config = QUIET.model_copy(update={"batch_size": 4})
    with pytest.raises(ValueError, match="non-finite activations .* 'nan-checkpoint' in batch 0"):
        qdm.audit(neox_model, neox_sae, neox_tokens, conditions, config)


def test_config_validation():
    with pytest.raises(ValueError, match="must not exceed"):
        qdm.AuditConfig(survival_threshold=0.4, damage_threshold=0.5)
    with pytest.raises(ValueError):
        qdm.AuditConfig(batch_size=0)
