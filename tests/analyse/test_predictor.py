"""Fragility predictor on synthetic features with a known signal (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_qdm.analyse.predictor import (
    INPUT_NAMES,
    fit_survival_predictor,
    predictor_inputs,
    quantile_bins,
    variance_inflation,
)
from pytest_qdm.schema.analyses import PredictorResult


def synthetic(n=2000, seed=0):
    """Reference statistics shaped like an SAE's; survival driven by rarity."""
    rng = np.random.default_rng(seed)
    firing_rate = 10 ** rng.uniform(-3, -0.5, n)
    scale = rng.lognormal(0.0, 0.5, n)
    mean = firing_rate * scale  # mean over all tokens, zeros included
    peak = scale * rng.uniform(2, 6, n)
    rarity = -np.log(firing_rate)
    survived = rarity + rng.normal(0, 0.3, n) < np.median(rarity)
    return firing_rate, mean, peak, survived


def test_known_signal_gives_high_auc():
    p, mean, peak, survived = synthetic()
    result = fit_survival_predictor(p, mean, peak, survived)
    assert result.status == "ok"
    assert result.auc_mean > 0.9
    assert len(result.fold_aucs) == 5
    assert result.auc_std == pytest.approx(np.std(result.fold_aucs))
    assert result.n_features == 2000 and result.n_survived == int(survived.sum())
    assert result.coefficients["rarity"] < 0  # rarer features survive less here
    assert set(result.coefficients) == set(INPUT_NAMES)
    assert "collinear" in result.message


def test_shuffled_labels_give_chance_auc():
    p, mean, peak, survived = synthetic()
    shuffled = np.random.default_rng(1).permutation(survived)
    result = fit_survival_predictor(p, mean, peak, shuffled)
    assert abs(result.auc_mean - 0.5) < 0.1


def test_deterministic_and_json_round_trip():
    p, mean, peak, survived = synthetic(n=500)
    first = fit_survival_predictor(p, mean, peak, survived)
    second = fit_survival_predictor(p, mean, peak, survived)
    assert first == second
    assert PredictorResult.model_validate_json(first.model_dump_json()) == first


def test_scaler_is_fitted_inside_each_fold():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from pytest_qdm.analyse.predictor import _pipeline

    steps = _pipeline().steps
    assert isinstance(_pipeline(), Pipeline)
    assert [type(s) for _, s in steps] == [StandardScaler, LogisticRegression]
    p, mean, peak, survived = synthetic(n=600, seed=4)
    survived = survived ^ (np.random.default_rng(5).random(600) < 0.2)  # imperfect signal
    x, y = predictor_inputs(p, mean, peak), survived.astype(int)
    manual = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        scaler = StandardScaler().fit(x[train])  # fitted on the training fold only
        model = LogisticRegression(C=1.0).fit(scaler.transform(x[train]), y[train])
        manual.append(roc_auc_score(y[test], model.decision_function(scaler.transform(x[test]))))
    result = fit_survival_predictor(p, mean, peak, survived)
    np.testing.assert_allclose(result.fold_aucs, manual, rtol=1e-12)
    full = Pipeline([("s", StandardScaler()), ("l", LogisticRegression(C=1.0))]).fit(x, y)
    np.testing.assert_allclose(list(result.coefficients.values()), full[-1].coef_[0])
    assert result.intercept == pytest.approx(full[-1].intercept_[0])


def test_one_class_and_too_few():
    p, mean, peak, _ = synthetic(n=100)
    one = fit_survival_predictor(p, mean, peak, np.ones(100, bool))
    assert one.status == "one_class" and one.auc_mean is None and one.fold_aucs is None
    assert one.coefficients is None and one.n_survived == 100
    none = fit_survival_predictor(p, mean, peak, np.zeros(100, bool))
    assert none.status == "one_class" and none.n_survived == 0
    labels = np.zeros(100, bool)
    labels[:3] = True
    few = fit_survival_predictor(p, mean, peak, labels)
    assert few.status == "too_few" and few.auc_mean is None and few.auc_std is None
    assert "fewer than n_splits=5" in few.message
    assert few.coefficients is not None  # one fit on all data is still possible


def test_inputs_follow_the_definitions():
    x = predictor_inputs([0.0, 0.5], [0.0, 0.2], [0.0, 3.0])
    np.testing.assert_allclose(x[0], [-np.log(1e-8), np.log(1e-8), np.log(1e-8), 0.0])
    np.testing.assert_allclose(x[1], [-np.log(0.5), np.log(0.2), np.log(3.0), np.log(3.0 / 0.2)])


def test_vif_shows_collinearity():
    p, mean, peak, survived = synthetic()
    result = fit_survival_predictor(p, mean, peak, survived)
    # rarity and log mean are correlated; log concentration = log max - log mean exactly
    assert result.vif["rarity"] > 1
    assert result.vif["log_concentration"] is None or result.vif["log_concentration"] > 1e6
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(5000, 4))
    assert all(1 <= v < 1.01 for v in variance_inflation(independent).values())
    correlated = independent.copy()
    correlated[:, 1] = correlated[:, 0] + 0.5 * correlated[:, 1]
    vif = variance_inflation(correlated)
    assert vif["rarity"] == pytest.approx(5.0, rel=0.1)  # 1 / (1 - 0.8)


def test_quartile_rates():
    p, mean, peak, survived = synthetic()
    result = fit_survival_predictor(p, mean, peak, survived)
    assert [q.input for q in result.quartiles] == list(INPUT_NAMES)
    rarity = result.quartiles[0]
    assert rarity.counts == [500, 500, 500, 500]
    assert len(rarity.edges) == 5
    x = predictor_inputs(p, mean, peak)[:, 0]
    low = survived[x < rarity.edges[1]].mean()
    assert rarity.survival_rate[0] == pytest.approx(low)
    assert rarity.survival_rate[0] > 0.9 and rarity.survival_rate[3] < 0.1


def test_quantile_bins_with_ties():
    edges, index = quantile_bins(np.array([0, 0, 0, 0, 0, 0, 1, 2.0]), 4)
    assert list(edges[:3]) == [0, 0, 0]
    assert np.bincount(index, minlength=4).tolist() == [0, 0, 6, 2]
    p = np.r_[np.full(50, 0.01), np.linspace(0.02, 0.5, 50)]
    result = fit_survival_predictor(p, p, np.ones(100), np.arange(100) % 2 == 0)
    rates = result.quartiles[0].survival_rate
    counts = result.quartiles[0].counts
    assert sum(counts) == 100
    assert all((r is None) == (c == 0) for r, c in zip(rates, counts, strict=True))


def test_validation():
    p, mean, peak, survived = synthetic(n=50)
    with pytest.raises(ValueError, match="equal lengths"):
        fit_survival_predictor(p[:-1], mean, peak, survived)
    with pytest.raises(ValueError, match="one entry per feature"):
        fit_survival_predictor(p, mean, peak, survived[:-1])
    with pytest.raises(ValueError, match="1-D"):
        fit_survival_predictor(p.reshape(5, 10), mean, peak, survived)
    bad = mean.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_survival_predictor(p, bad, peak, survived)
    with pytest.raises(ValueError, match="0/1"):
        fit_survival_predictor(p, mean, peak, survived * 2.5)
    with pytest.raises(ValueError, match="n_splits"):
        fit_survival_predictor(p, mean, peak, survived, n_splits=1)
