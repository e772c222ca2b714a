"""The engine's fast paths against the plain computations they replace (bit for bit on CPU).

- Paired statistics from x's and y's nonzeros separately vs. the plain pass over the union of
  nonzeros; block by block vs. one block.
- Reference statistics from concatenated block entries vs. the dense batch.
- The engine with small encode blocks vs. one block, and with the CPU allocator tuning on/off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
import pytest_qdm.stream.engine as engine
from pytest_qdm.stream.stats import Entries, PairedStats, PairedSums, ReferenceStats

FIELDS = ("mean_x", "mean_y", "m2_x", "m2_y", "c_xy", "fire_count_y")


def plain_paired(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The plain path: one pass over the entries where x or y is nonzero."""
    n, d_sae = x.shape
    rows, cols = ((x != 0) | (y != 0)).nonzero(as_tuple=True)
    xv, yv = x[rows, cols].double(), y[rows, cols].double()

    def total(values):
        return torch.zeros(d_sae, dtype=torch.float64).index_add_(0, cols, values)

    sum_x, sum_y = total(xv), total(yv)
    mean_x, mean_y = sum_x / n, sum_y / n
    return {
        "mean_x": mean_x,
        "mean_y": mean_y,
        "m2_x": (total(xv * xv) - sum_x * mean_x).clamp_min(0),
        "m2_y": (total(yv * yv) - sum_y * mean_y).clamp_min(0),
        "c_xy": total(xv * yv) - sum_x * mean_y,
        "fire_count_y": total((yv > 0).double()),
    }


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(300, 40, generator=g) - 1.0
    x = torch.relu(pre)
    y = torch.relu(pre + 0.7 * torch.randn(300, 40, generator=g))
    x[:, :3] = pre[:, :3]  # features with negative values
    y[::7] = 0.0  # y silent where x fires
    x[:, 5] = 0.0  # x constant, y not
    return x, y


def test_separate_nonzeros_equal_the_union_pass_bit_for_bit(pair):
    x, y = pair
    fast, plain = PairedStats.of_batch(x, y), plain_paired(x, y)
    for field in FIELDS:
        assert torch.equal(getattr(fast, field), plain[field]), field


@pytest.mark.parametrize("heights", [[300], [64, 64, 172], [1, 99, 200], [150, 150]])
def test_blocks_in_order_equal_one_block_bit_for_bit(pair, heights):
    x, y = pair
    x_blocks = [Entries.of(b) for b in torch.split(x, heights)]
    entries = Entries.cat(x_blocks, heights)
    sums = PairedSums(x.shape[0], *PairedSums.reference(x.shape[1], entries))
    for block, y_block in zip(x_blocks, torch.split(y, heights), strict=True):
        sums.add(block, y_block)
    blocked, whole = sums.stats(), PairedStats.of_batch(x, y)
    for field in FIELDS:
        assert torch.equal(getattr(blocked, field), getattr(whole, field)), field
    reference = ReferenceStats.of_entries(x.shape[0], x.shape[1], entries)
    dense = ReferenceStats.of_batch(x)
    for field in ("fire_count", "total", "nonzero_max", "nonzero_count"):
        assert torch.equal(getattr(reference, field), getattr(dense, field)), field


def test_entries_cat_offsets_rows(pair):
    x, _ = pair
    parts = [Entries.of(b) for b in torch.split(x, [100, 200])]
    joined, whole = Entries.cat(parts, [100, 200]), Entries.of(x)
    for field in ("rows", "cols", "values"):
        assert torch.equal(getattr(joined, field), getattr(whole, field)), field


def test_encode_blocks_cover_the_batch_in_order(neox_sae, monkeypatch):
    monkeypatch.setitem(engine.ENCODE_BLOCK_ELEMENTS, "cpu", 1)  # MIN_BLOCK_ROWS rows each
    activations = torch.randn(200, neox_sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        blocks = list(engine.encode_blocks(neox_sae, activations))
        whole = engine.encode(neox_sae, activations)
    assert [len(b) for b in blocks] == [67, 67, 66]  # 200 // 64 = 3 blocks of >= 64 rows
    torch.testing.assert_close(torch.cat(blocks), whole, rtol=0, atol=1e-6)


def run(model, sae, tokens, conditions):
    config = qdm.AuditConfig(progress=False, batch_size=16)
    return qdm.audit(model, sae, tokens, conditions, config)


def test_engine_results_do_not_depend_on_encode_blocks_or_allocator(
    neox_model, neox_sae, neox_tokens, monkeypatch
):
    conditions = [qdm.RTN(4), qdm.MagnitudePrune(0.3)]
    monkeypatch.setitem(engine.ENCODE_BLOCK_ELEMENTS, "cpu", 1 << 40)  # one block per batch
    one_block = run(neox_model, neox_sae, neox_tokens, conditions)
    monkeypatch.setitem(engine.ENCODE_BLOCK_ELEMENTS, "cpu", 1)  # 512 tokens: 8 blocks
    blocked = run(neox_model, neox_sae, neox_tokens, conditions)
    monkeypatch.setattr(engine, "TUNE_CPU_ALLOCATOR", False)
    untuned = run(neox_model, neox_sae, neox_tokens, conditions)
    for name in one_block.conditions:
        expected = one_block.conditions[name].correlation
        np.testing.assert_allclose(blocked.conditions[name].correlation, expected, atol=1e-9)
        np.testing.assert_array_equal(
            untuned.conditions[name].correlation, blocked.conditions[name].correlation
        )
    np.testing.assert_array_equal(
        blocked.reference.max_activation, one_block.reference.max_activation
    )


def test_negative_zero_is_not_an_entry():
    x = torch.tensor([[0.0, -0.0, 1.0], [-0.0, 2.0, 0.0]])
    entries = Entries.of(x)
    assert entries.rows.tolist() == [0, 1] and entries.cols.tolist() == [2, 1]
    assert ReferenceStats.of_batch(x).nonzero_count.tolist() == [0.0, 1.0, 1.0]
