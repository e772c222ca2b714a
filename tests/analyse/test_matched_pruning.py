"""Matched-pruning search on synthetic curves, damage overlap on hand-made vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_qdm.analyse.matched_pruning import match_sparsity
from pytest_qdm.analyse.overlap import compare_damage
from pytest_qdm.schema.analyses import OverlapResult, PruningMatch


def cubic(s):
    return 10 * (1 + s) ** 3


def test_converges_on_monotone_curve():
    target = cubic(0.2)
    result = match_sparsity(cubic, target, tokens_used=4096)
    assert result.status == "converged" and result.converged and result.monotone
    assert abs(result.rel_error) <= 0.005
    assert result.sparsity == pytest.approx(0.2, abs=0.003)
    assert result.achieved == pytest.approx(cubic(result.sparsity))
    assert result.abs_error == pytest.approx(result.achieved - target)
    assert [s.sparsity for s in result.steps[:3]] == [0.0, 0.9, 0.45]
    assert len(result.steps) <= 2 + 12
    assert result.tokens_used == 4096
    assert PruningMatch.model_validate_json(result.model_dump_json()) == result


def test_stops_after_max_steps_with_best_step():
    result = match_sparsity(cubic, cubic(0.2), max_steps=3, rel_tolerance=1e-6)
    assert result.status == "not_converged" and not result.converged
    assert len(result.steps) == 5
    best = min(result.steps, key=lambda s: abs(s.rel_error))
    assert (result.sparsity, result.achieved) == (best.sparsity, best.perplexity)
    assert "not within" in result.message


def test_non_monotone_curve_reports_and_returns_best():
    def dip(s):  # a dip below the unpruned perplexity around s = 0.45
        return 5.0 if 0.4 <= s < 0.5 else cubic(s)

    result = match_sparsity(dip, cubic(0.2), max_steps=8)
    assert result.monotone is False
    assert "not monotone" in result.message
    best = min(result.steps, key=lambda s: abs(s.rel_error))
    assert result.rel_error == best.rel_error and result.sparsity == best.sparsity
    assert result.converged == (abs(best.rel_error) <= 0.005)


def test_target_out_of_range_is_reported():
    below = match_sparsity(cubic, 5.0)
    assert below.status == "below_range" and not below.converged
    assert below.sparsity == 0.0 and len(below.steps) == 2
    above = match_sparsity(cubic, 1000.0, high=0.5)
    assert above.status == "above_range" and above.sparsity == 0.5
    assert "above" in above.message
    at_end = match_sparsity(cubic, 10.0)
    assert at_end.status == "converged" and at_end.sparsity == 0.0


def test_match_validation():
    with pytest.raises(ValueError, match="low"):
        match_sparsity(cubic, 20.0, low=0.5, high=0.5)
    with pytest.raises(ValueError, match="target"):
        match_sparsity(cubic, -1.0)
    with pytest.raises(TypeError, match="target"):
        match_sparsity(cubic, "20")
    assert match_sparsity(cubic, np.float32(20.0)).target == 20.0
    with pytest.raises(ValueError, match="returned"):
        match_sparsity(lambda s: math.nan, 20.0)
    with pytest.raises(TypeError):
        match_sparsity(20.0, 20.0)


ACTIVE = np.array([True, True, True, True, True, True, False, False])
R_A = np.array([0.95, 0.85, 0.40, 0.30, 0.92, 0.70, np.nan, 0.10])
R_B = np.array([0.93, 0.91, 0.45, 0.60, 0.80, 0.20, np.nan, np.nan])


def test_overlap_by_hand():
    result = compare_damage(R_A, R_B, ACTIVE, labels=("rtn-int6", "prune-0.175"))
    assert result.n_active == 6
    # not survived (r <= 0.9): a {1,2,3,5}, b {2,3,4,5}
    assert (result.n_not_survived_a, result.n_not_survived_b) == (4, 4)
    assert (result.n_not_survived_both, result.n_not_survived_either) == (3, 5)
    assert result.jaccard_not_survived == pytest.approx(3 / 5)
    # damaged (r < 0.5): a {2,3}, b {2,5}
    assert (result.n_damaged_both, result.n_damaged_either) == (1, 3)
    assert result.jaccard_damaged == pytest.approx(1 / 3)
    # damage ranks a [1,3,5,6,2,4], b [1,2,5,4,3,6]: sum d^2 = 10, rho = 1 - 60/210
    assert result.spearman_damage == pytest.approx(5 / 7)
    expected = np.corrcoef(1 - R_A[:6], 1 - R_B[:6])[0, 1]
    assert result.pearson_damage == pytest.approx(expected)
    assert result.by_firing_rate_decile is None
    assert result.label_a == "rtn-int6"
    assert OverlapResult.model_validate_json(result.model_dump_json()) == result


def test_inactive_features_are_ignored():
    a, b = R_A.copy(), R_B.copy()
    a[6:], b[6:] = -1.0, 1.0
    assert compare_damage(a, b, ACTIVE) == compare_damage(R_A, R_B, ACTIVE)


def test_empty_sets_and_constant_scores_are_none():
    ones = np.ones(5)
    result = compare_damage(ones, ones, np.ones(5, bool))
    assert result.jaccard_not_survived is None and result.jaccard_damaged is None
    assert result.pearson_damage is None and result.spearman_damage is None
    nothing = compare_damage(ones, ones, np.zeros(5, bool), firing_rate=ones)
    assert nothing.n_active == 0 and nothing.by_firing_rate_decile is None


def test_nan_for_active_feature_raises():
    a = R_A.copy()
    a[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        compare_damage(a, R_B, ACTIVE)
    with pytest.raises(TypeError, match="boolean"):
        compare_damage(R_A, R_B, ACTIVE.astype(int))
    with pytest.raises(ValueError, match="equal lengths"):
        compare_damage(R_A[:-1], R_B, ACTIVE)


def test_firing_rate_deciles():
    n = 40  # 30 active, 3 per decile
    active = np.arange(n) < 30
    rate = np.r_[np.linspace(0.01, 0.3, 30), np.zeros(10)]
    a = np.where(np.arange(n) < 6, 0.2, 0.99)  # the 6 rarest active features lost
    b = np.where(np.arange(n) < 3, 0.2, 0.99)
    result = compare_damage(a, b, active, firing_rate=rate)
    deciles = result.by_firing_rate_decile
    assert len(deciles) == 10
    assert [d.count for d in deciles] == [3] * 10
    assert [d.non_survived_a for d in deciles] == [3, 3] + [0] * 8
    assert [d.rate_b for d in deciles] == [1.0] + [0.0] * 9
    assert deciles[0].low == pytest.approx(0.01) and deciles[-1].high == pytest.approx(0.3)


def test_matching_on_a_tiny_model(neox_model, neox_tokens):
    """Search and final run share the token set: the reported perplexity is exactly what a
    fresh run at the returned sparsity gives, and the model is left untouched."""
    import torch

    from pytest_qdm.analyse.perplexity import perplexity_under
    from pytest_qdm.compress.conditions import RTN, MagnitudePrune

    before = {k: v.clone() for k, v in neox_model.state_dict().items()}
    tokens = neox_tokens[:8]

    def ppl(condition):
        return perplexity_under(neox_model, condition, tokens, bos_in_tokens=False)

    reference = ppl(RTN(bits=8))
    result = match_sparsity(
        lambda s: ppl(MagnitudePrune(s)).perplexity,
        reference.perplexity,
        high=0.3,
        max_steps=3,
        rel_tolerance=1e-5,  # tight, so the bisection really runs on this random model
        tokens_used=reference.n_scored_tokens,
    )
    assert len(result.steps) >= 3
    assert ppl(MagnitudePrune(result.sparsity)).perplexity == result.achieved
    assert result.tokens_used == 8 * 31
    after = neox_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
