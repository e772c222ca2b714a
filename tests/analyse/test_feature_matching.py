"""Lost or moved: decoder-cosine matching (Hungarian, greedy) and the per-band verdicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pytest_qdm.analyse.feature_matching import (
    band_names,
    decoder_cosines,
    lost_or_moved,
    match_features,
)


def test_cosines_match_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    b[2] = 0.0
    expected = [
        [0.0 if not y.any() else x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b]
        for x in a
    ]
    np.testing.assert_allclose(decoder_cosines(a, b), expected, atol=1e-12)


def test_hungarian_is_the_best_one_to_one_assignment():
    rng = np.random.default_rng(1)
    cosines = rng.uniform(-1, 1, size=(4, 6))
    match = match_features(cosines, "hungarian")
    assert len(set(match.tolist())) == 4  # one to one
    best = max(
        sum(cosines[i, j] for i, j in enumerate(cols))
        for cols in itertools.permutations(range(6), 4)
    )
    assert cosines[np.arange(4), match].sum() == pytest.approx(best)


def test_greedy_takes_each_rows_maximum_even_when_shared():
    cosines = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert match_features(cosines, "greedy").tolist() == [0, 0]
    assert match_features(cosines, "hungarian").tolist() == [0, 1]


def test_bad_matching_is_refused():
    with pytest.raises(ValueError, match="matching must be one of"):
        match_features(np.eye(2), "best")
    with pytest.raises(ValueError, match="use 'greedy'"):
        match_features(np.ones((3, 2)), "hungarian")


def test_verdicts_and_band_split():
    features = np.array([3, 5, 7, 9])
    frozen = np.array([0.95, 0.7, 0.2, 0.1])  # survived, degraded, damaged, damaged
    assert band_names(frozen, 0.9, 0.5).tolist() == [
        "survived",
        "degraded",
        "damaged",
        "damaged",
    ]
    cosine = np.array([0.99, 0.95, 0.95, 0.5])
    r = np.array([0.99, 0.92, 0.85, 0.99])  # 7: r too low; 9: cosine too low
    matches, bands, lost = lost_or_moved(features, frozen, np.arange(4), cosine, r, (0.9, 0.5))
    assert [m.moved for m in matches] == [True, True, False, False]
    split = {b.band: (b.count, b.moved, b.lost) for b in bands}
    assert split == {"survived": (1, 1, 0), "degraded": (1, 1, 0), "damaged": (2, 0, 2)}
    assert lost == [9, 7]  # lowest cosine first
