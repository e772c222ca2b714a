"""Perplexity protocols against an independent float64 computation on a tiny model."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from pytest_qdm.analyse.perplexity import (
    chunked_perplexity,
    perplexity_under,
    relative_change,
    sliding_window_perplexity,
)
from pytest_qdm.compress.conditions import RTN, MagnitudePrune
from pytest_qdm.compress.swap import applied
from pytest_qdm.schema.analyses import PerplexityResult

BOS = 0


def direct_nll(model, rows):
    """Per-position NLL [b, pos-1] of each row, float64, written independently."""
    with torch.no_grad():
        logits = model(rows).double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, rows[:, 1:, None]).squeeze(-1)


def stream(model, n, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.cfg.d_vocab, (n,), generator=generator)


def with_bos(blocks):
    return torch.cat([torch.full((blocks.shape[0], 1), BOS), blocks], dim=1)


def test_chunked_without_bos_matches_direct(neox_model, neox_tokens):
    result = chunked_perplexity(neox_model, neox_tokens, bos_in_tokens=False, batch_size=5)
    nll = direct_nll(neox_model, neox_tokens)
    assert result.n_scored_tokens == nll.numel() == 16 * 31
    assert result.mean_nll == pytest.approx(float(nll.mean()), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(float(nll.mean())), rel=1e-6)
    assert result.protocol == "chunked" and result.stride is None
    assert result.prepend_bos is False and result.bos_token_id is None
    assert result.context_length == 32 and "not scored" in result.note


def test_chunked_with_bos_matches_direct(neox_model):
    blocks = with_bos(stream(neox_model, 8 * 31).reshape(8, 31))
    result = chunked_perplexity(neox_model, blocks, bos_in_tokens=True, batch_size=3)
    nll = direct_nll(neox_model, blocks)
    assert result.n_scored_tokens == 8 * 31  # every corpus token
    assert result.mean_nll == pytest.approx(float(nll.mean()), rel=1e-6)
    assert result.prepend_bos is True and result.bos_token_id == BOS


def test_chunked_bos_column_must_be_constant(neox_model, neox_tokens):
    with pytest.raises(ValueError, match="column 0"):
        chunked_perplexity(neox_model, neox_tokens, bos_in_tokens=True)


@pytest.mark.parametrize("window", [8, 32])
def test_sliding_non_overlapping_equals_chunked_without_bos(neox_model, window):
    ids = stream(neox_model, 4 * window)
    sliding = sliding_window_perplexity(neox_model, ids, window=window, stride=window)
    chunked = chunked_perplexity(neox_model, ids.reshape(4, window), bos_in_tokens=False)
    assert sliding.n_scored_tokens == chunked.n_scored_tokens == 4 * (window - 1)
    assert sliding.mean_nll == pytest.approx(chunked.mean_nll, rel=1e-9)
    assert sliding.protocol == "sliding" and sliding.stride == window


def test_sliding_non_overlapping_equals_chunked_with_bos(neox_model):
    window = 16
    ids = stream(neox_model, 5 * (window - 1))
    sliding = sliding_window_perplexity(
        neox_model, ids, window=window, stride=window - 1, bos_token_id=BOS, batch_size=2
    )
    chunked = chunked_perplexity(
        neox_model, with_bos(ids.reshape(5, window - 1)), bos_in_tokens=True
    )
    assert sliding.n_scored_tokens == chunked.n_scored_tokens == ids.numel()
    assert sliding.mean_nll == pytest.approx(chunked.mean_nll, rel=1e-9)
    assert sliding.prepend_bos and sliding.bos_token_id == BOS


def expected_sliding(model, ids, window, stride, bos):
    """Score each corpus position once, from the window that first introduces it,
    computed position by position (no reuse of the library's window plan)."""
    n = ids.numel()
    span = window - (bos is not None)
    starts = list(range(0, n - span + 1, stride))
    if starts[-1] + span < n:
        starts.append(n - span)
    shift = 1 if bos is not None else 0
    rows = torch.stack([ids[start : start + span] for start in starts])
    if bos is not None:
        rows = torch.cat([torch.full((len(starts), 1), bos), rows], dim=1)
    nll = direct_nll(model, rows)
    total, scored = 0.0, []
    done = 0 if bos is not None else 1  # corpus positions < done are already scored
    for row, start in enumerate(starts):
        for corpus_pos in range(max(done, start + 1 - shift), start + span):
            total += float(nll[row, corpus_pos - start + shift - 1])
            scored.append(corpus_pos)
        done = start + span
    return total / len(scored), scored


@pytest.mark.parametrize("bos", [None, BOS])
@pytest.mark.parametrize(
    ("n", "window", "stride"), [(100, 16, 5), (64, 32, 16), (53, 16, 7), (37, 8, 1)]
)
def test_sliding_overlap_scores_each_position_once(neox_model, n, window, stride, bos):
    ids = stream(neox_model, n)
    result = sliding_window_perplexity(
        neox_model, ids, window=window, stride=stride, bos_token_id=bos, batch_size=3
    )
    mean, scored = expected_sliding(neox_model, ids, window, stride, bos)
    first = 0 if bos is not None else 1
    assert scored == list(range(first, n))  # each position once, in order
    assert result.n_scored_tokens == (n if bos is not None else n - 1)
    assert result.mean_nll == pytest.approx(mean, rel=1e-6)
    assert result.context_length == window


def test_sliding_stream_shorter_than_window(neox_model):
    ids = stream(neox_model, 10)
    result = sliding_window_perplexity(neox_model, ids, window=32, stride=8)
    nll = direct_nll(neox_model, ids[None])
    assert result.n_scored_tokens == 9
    assert result.mean_nll == pytest.approx(float(nll.mean()), rel=1e-6)


def test_relative_change():
    assert relative_change(11.0, 10.0) == pytest.approx(0.1)
    assert relative_change(9.0, 10.0) == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        relative_change(1.0, 0.0)
    with pytest.raises(ValueError):
        relative_change(float("nan"), 1.0)


def test_bad_inputs_raise(neox_model, neox_tokens):
    with pytest.raises(ValueError, match="2 dimension"):
        chunked_perplexity(neox_model, neox_tokens[0], bos_in_tokens=False)
    with pytest.raises(ValueError, match="ctx >= 2"):
        chunked_perplexity(neox_model, neox_tokens[:, :1], bos_in_tokens=False)
    with pytest.raises(ValueError, match="integer"):
        chunked_perplexity(neox_model, neox_tokens.float(), bos_in_tokens=False)
    with pytest.raises(TypeError):
        chunked_perplexity(neox_model, neox_tokens, bos_in_tokens=None)
    with pytest.raises(ValueError, match="n_ctx"):
        chunked_perplexity(neox_model, neox_tokens.repeat(1, 2), bos_in_tokens=False)
    with pytest.raises(ValueError, match="ids in"):
        chunked_perplexity(neox_model, neox_tokens + 1000, bos_in_tokens=False)
    ids = neox_tokens.flatten()
    with pytest.raises(ValueError, match="window"):
        sliding_window_perplexity(neox_model, ids, window=1, stride=1)
    with pytest.raises(ValueError, match="skip"):
        sliding_window_perplexity(neox_model, ids, window=8, stride=9)
    with pytest.raises(ValueError, match="skip"):
        sliding_window_perplexity(neox_model, ids, window=8, stride=8, bos_token_id=BOS)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(neox_model, ids, window=8, stride=0)
    with pytest.raises(ValueError, match="1 dimension"):
        sliding_window_perplexity(neox_model, neox_tokens, window=8, stride=4)


def test_perplexity_under_condition_restores_model(neox_model, neox_tokens):
    before = {k: v.clone() for k, v in neox_model.state_dict().items()}
    condition = RTN(bits=4)
    result = perplexity_under(neox_model, condition, neox_tokens, bos_in_tokens=False)
    with applied(neox_model, condition.compressed_weights(neox_model)):
        direct = direct_nll(neox_model, neox_tokens)
    assert result.mean_nll == pytest.approx(float(direct.mean()), rel=1e-6)
    reference = chunked_perplexity(neox_model, neox_tokens, bos_in_tokens=False)
    assert result.perplexity != reference.perplexity
    after = neox_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    pruned = perplexity_under(neox_model, MagnitudePrune(0.0), neox_tokens, bos_in_tokens=False)
    assert pruned.mean_nll == pytest.approx(reference.mean_nll, rel=1e-12)


def test_result_is_frozen_and_json(neox_model, neox_tokens):
    result = chunked_perplexity(neox_model, neox_tokens, bos_in_tokens=False)
    again = PerplexityResult.model_validate_json(result.model_dump_json())
    assert again == result
    with pytest.raises(ValueError):
        result.perplexity = 1.0


@pytest.mark.parametrize("bos", [None, BOS])
def test_sliding_matches_chunked_on_data_chunk_tokens(neox_model, bos):
    """The blocks that pytest_qdm.load.tokens.chunk_tokens cuts are the non-overlapping windows."""
    data = pytest.importorskip("pytest_qdm.load.tokens")
    span = 16 - (bos is not None)
    ids = stream(neox_model, 4 * span)
    blocks = data.chunk_tokens(ids, 16, bos_token_id=bos)
    chunked = chunked_perplexity(neox_model, blocks, bos_in_tokens=bos is not None)
    sliding = sliding_window_perplexity(neox_model, ids, window=16, stride=span, bos_token_id=bos)
    assert chunked.n_scored_tokens == sliding.n_scored_tokens
    assert chunked.mean_nll == pytest.approx(sliding.mean_nll, rel=1e-9)
