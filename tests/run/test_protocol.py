"""The full protocol on the bundled model, and the stability checks' merge arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.analyse.stability import (
    _scaled,
    bootstrap_survival,
    merge_all,
    survival_by_condition,
)
from pytest_qdm.run.audit import prepare_conditions
from pytest_qdm.schema.analyses import ConfidenceInterval
from pytest_qdm.settings import ProtocolConfig
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.passes import run_pass
from pytest_qdm.zoo import TINY_SECOND_HOOK

QUIET = qdm.AuditConfig(progress=False)


@pytest.fixture(scope="module")
def tiny():
    return qdm.load_preset("tiny")


@pytest.fixture(scope="module")
def tiny_report(tiny):
    tokens = tiny.tokens(16_384)
    protocol = ProtocolConfig(ppl_tokens=4096, n_bootstrap=50, sae_prune_fractions=(0.25,))
    # The bundled model's features degrade gradually from INT8 to INT4 (docs in its card).
    return qdm.run_protocol(
        tiny.model,
        tiny.sae,
        tokens,
        bits=(8, 6, 4),
        match_bits=6,
        config=QUIET,
        protocol=protocol,
        second_sae=tiny.saes[TINY_SECOND_HOOK],
    )


def test_protocol_on_the_bundled_model(tiny_report):
    report = tiny_report
    rtn = [r for r in report.sweep if r.kind == "RTN"]
    assert [r.bits for r in rtn] == [8, 6, 4]
    survived = [r.survived_pct for r in rtn]
    assert survived == sorted(survived, reverse=True) and survived[0] > survived[-1] + 20
    assert survived[0] >= 95 and survived[-1] <= 60  # graded, as real models are
    assert report.predictor.status == "ok" and report.predictor.auc_mean > 0.5  # two classes
    assert report.overlap.jaccard_not_survived is not None
    assert report.stability.null.passed
    assert report.sae_fit.ok and report.sae_fit.explained_variance > 0.8
    assert report.pruning is not None and report.overlap is not None
    assert report.pruning.tokens_used == 4096 and report.pruning.steps
    for row in rtn:
        low, high = row.survived_ci
        assert low <= row.survived_pct <= high
    assert report.reference_perplexity["chunked"].prepend_bos
    assert report.stability.second_layer is not None
    assert set(report.transfer) >= {"reference", "rtn-int4"}
    assert (
        report.transfer["reference"].explained_variance
        > report.transfer["rtn-int4"].explained_variance
    )


def test_token_lenses_read_high_while_features_fail(tiny_report):
    """The documented caveat, on the bundled model: at INT4 the per-token correlation of the
    feature vectors stays high while most features no longer survive."""
    reference, int4 = tiny_report.row("reference"), tiny_report.row("rtn-int4")
    assert reference.sample_correlation == pytest.approx(1.0) and reference.topk_agreement == 1
    print(f"INT4 sample r {int4.sample_correlation:.3f}, survived {int4.survived_pct:.1f}%")
    assert int4.sample_correlation > 0.85 and int4.survived_pct < 60
    rtn = [r for r in tiny_report.sweep if r.kind == "RTN"]
    for field in ("sample_correlation", "topk_agreement"):
        values = [getattr(r, field) for r in rtn]
        assert values == sorted(values, reverse=True), field
    errors = [r.procrustes_error for r in rtn]
    assert errors == sorted(errors) and all(r.procrustes_error < r.unaligned_error for r in rtn)


def test_sae_pruning_sweep_runs_on_the_shipped_condition(tiny_report):
    sweep = tiny_report.sae_pruning
    assert {r.condition for r in sweep.rows} == {"reference", "rtn-int6"}
    assert sweep.row(0.25).n_features_kept == tiny_report.audit.d_sae * 3 // 4
    # The bundled SAE is TopK: a pruned one still fires k features per token, re-selected
    # among those kept, so removing the least important quarter barely moves EV.
    assert sweep.row(0.25).mean_l0 == sweep.row(0.0).mean_l0 == 32  # k
    assert abs(sweep.row(0.25).explained_variance - sweep.row(0.0).explained_variance) < 0.01
    unpruned = tiny_report.transfer["rtn-int6"].explained_variance
    assert sweep.row(0.0, "rtn-int6").explained_variance == pytest.approx(unpruned)


def test_protocol_report_round_trips(tiny_report):
    again = qdm.ProtocolReport.from_json(tiny_report.to_json())
    assert again.to_json() == tiny_report.to_json()


def test_bad_protocol_arguments_fail_before_work(tiny):
    with pytest.raises(ValueError, match="match_bits=3 must be one of the audited bits"):
        qdm.run_protocol(tiny.model, tiny.sae, tiny.tokens(1024), bits=(8, 4), match_bits=3)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\), got 1.5"):
        qdm.run_protocol(
            tiny.model,
            tiny.sae,
            tiny.tokens(1024),
            protocol=ProtocolConfig(sae_prune_fractions=(0.25, 1.5)),
            config=QUIET,
        )


def test_misfit_sae_is_refused_with_numbers(tiny):
    wrong_layer = qdm.AuditConfig(hook_name="blocks.0.hook_resid_pre", progress=False)
    with pytest.raises(ValueError, match="SAE does not fit the model: explained variance"):
        qdm.run_protocol(tiny.model, tiny.sae, tiny.tokens(2048), config=wrong_layer)


# Stability arithmetic on a config model -----------------------------------------------


@pytest.fixture(scope="module")
def shard_states(neox_model, neox_sae, neox_tokens):
    conditions = [qdm.RTN(6), qdm.RTN(3)]
    hook = "blocks.1.hook_resid_post"
    prepared = prepare_conditions(neox_model, conditions, hook, compute_loss=False)
    return [
        run_pass(PassSpec(neox_model, neox_sae, conditions, prepared, hook, QUIET), rows)
        for rows in torch.tensor_split(neox_tokens, 4)
    ]


def test_scaled_shard_equals_merging_copies(shard_states):
    shard = shard_states[0]
    copies = merge_all([shard, shard, shard])
    scaled = _scaled(shard, 3)
    for name in shard.paired:
        np.testing.assert_allclose(
            scaled.paired[name].correlation()[0], copies.paired[name].correlation()[0], atol=1e-12
        )
    assert survival_by_condition(scaled, QUIET) == survival_by_condition(copies, QUIET)


def test_bootstrap_is_seeded_and_brackets_the_estimate(shard_states):
    a = bootstrap_survival(shard_states, QUIET, n_resamples=30, seed=0)
    b = bootstrap_survival(shard_states, QUIET, n_resamples=30, seed=0)
    assert a == b
    full = survival_by_condition(merge_all(shard_states), QUIET)
    for name, interval in a.items():  # centred on the estimate, as wide as the resamples vary
        assert interval.low <= full[name] <= interval.high, (name, interval, full[name])
    assert all(a[n].high - a[n].low > 0 for n in a if full[n] < 100)
    one_shard = bootstrap_survival(shard_states[:1], QUIET, n_resamples=30, seed=0)
    assert one_shard["rtn-int6"] == ConfidenceInterval(
        low=None, high=None, level=0.95, n_resamples=30
    )
