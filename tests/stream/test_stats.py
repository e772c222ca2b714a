"""Streaming statistics against dense float64 computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qdm.stream.stats import PairedStats, ReferenceStats


def stream(x: torch.Tensor, y: torch.Tensor, batch: int) -> PairedStats:
    state = PairedStats.empty(x.shape[1])
    for xb, yb in zip(torch.split(x, batch), torch.split(y, batch), strict=True):
        state = state.merge(PairedStats.of_batch(xb, yb))
    return state


def dense_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return (xc * yc).sum(0) / np.sqrt((xc**2).sum(0) * (yc**2).sum(0))


@pytest.fixture
def dense_pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 24, generator=g) * 3 + 5
    y = 0.7 * x + torch.randn(1000, 24, generator=g)
    return x, y


@pytest.fixture
def sparse_pair():
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(2000, 64, generator=g) - 1.5
    x = torch.relu(pre)
    y = torch.relu(pre + 0.5 * torch.randn(2000, 64, generator=g))
    return x, y


@pytest.mark.parametrize("data", ["dense_pair", "sparse_pair"])
@pytest.mark.parametrize("batch", [1, 7, 256, 5000])
def test_streamed_pearson_equals_dense_numpy(request, data, batch):
    x, y = request.getfixturevalue(data)
    r, silenced = stream(x, y, batch).correlation()
    expected = dense_pearson(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(r, expected, atol=1e-9, rtol=0)
    assert not silenced.any()


def test_merge_of_three_shards_equals_one_pass(sparse_pair):
    x, y = sparse_pair
    one = stream(x, y, 100)
    a, b, c = (
        stream(x[:300], y[:300], 64),
        stream(x[300:1100], y[300:1100], 50),
        stream(x[1100:], y[1100:], 128),
    )
    merged = c.merge(a.merge(b))
    for field in ("mean_x", "mean_y", "m2_x", "m2_y", "c_xy", "fire_count_y"):
        np.testing.assert_allclose(
            getattr(merged, field), getattr(one, field), rtol=1e-12, atol=1e-9
        )
    assert merged.n == one.n == 2000
    np.testing.assert_allclose(merged.correlation()[0], one.correlation()[0], atol=1e-12)


def test_constant_compressed_feature_is_silenced_with_r_zero():
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    r, silenced = stream(x, y, 3).correlation()
    assert r[0] == 0.0 and silenced[0]
    # A constant reference reproduced exactly counts as preserved, not silenced.
    assert r[1] == 1.0 and not silenced[1]


def test_all_zero_feature_has_no_nan():
    x = torch.zeros(10, 3)
    y = torch.zeros(10, 3)
    y[4, 2] = 1.0
    r, silenced = stream(x, y, 4).correlation()
    assert r.tolist() == [1.0, 1.0, 0.0] and not silenced.any()


def test_reference_stats_equal_dense(sparse_pair):
    x, _ = sparse_pair
    x = x.clone()
    x[:, 5] = 2.0  # a feature that fires on every token: its max has no zero
    state = ReferenceStats.empty(64)
    for xb in torch.split(x, 333):
        state = state.merge(ReferenceStats.of_batch(xb))
    dense = x.double().numpy()
    np.testing.assert_allclose(state.firing_rate(), (dense > 0).mean(0), atol=1e-15)
    np.testing.assert_allclose(state.mean_activation(), dense.mean(0), atol=1e-12)
    np.testing.assert_array_equal(state.max_activation(), dense.max(0))


def test_max_counts_zero_for_negative_features():
    x = torch.tensor([[-1.0], [0.0], [-3.0]])
    assert ReferenceStats.of_batch(x).max_activation().tolist() == [0.0]
    assert ReferenceStats.of_batch(x[[0, 2]]).max_activation().tolist() == [-1.0]


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        PairedStats.of_batch(torch.zeros(3, 2), torch.zeros(3, 4))
