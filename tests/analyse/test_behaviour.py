"""Behavioural metrics (KL, reverse KL, top-1, top-k) against a dense float64 computation
from the two models' logits, the null condition, and the spill to disk."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_qdm.analyse.behaviour import BehaviourSums, ReferenceLogits
from pytest_qdm.analyse.perplexity import chunked_perplexity
from pytest_qdm.compress.conditions import RTN, MagnitudePrune
from pytest_qdm.compress.swap import applied


def dense_behaviour(p_model, q_model, rows, k):
    """Mean KL(p||q), KL(q||p), top-1 agreement, top-k overlap, p-change at p's top token
    over every predicting position, all at once in float64 (written independently)."""
    with torch.no_grad():
        log_p = torch.log_softmax(p_model(rows)[:, :-1].double(), -1).reshape(
            -1, p_model.cfg.d_vocab
        )
        log_q = torch.log_softmax(q_model(rows)[:, :-1].double(), -1).reshape(
            -1, q_model.cfg.d_vocab
        )
    p, q = log_p.exp(), log_q.exp()
    kl = (p * (log_p - log_q)).sum(-1).mean()
    reverse = (q * (log_q - log_p)).sum(-1).mean()
    top1 = (p.argmax(-1) == q.argmax(-1)).double().mean()
    tops_p, tops_q = p.topk(k, -1).indices.tolist(), q.topk(k, -1).indices.tolist()
    overlap = sum(len(set(a) & set(b)) / k for a, b in zip(tops_p, tops_q, strict=True)) / len(
        tops_p
    )
    top = p.argmax(-1, keepdim=True)
    change = (q.gather(-1, top) - p.gather(-1, top)).mean()
    return float(kl), float(reverse), float(top1), overlap, float(change)


def measured(model, rows, condition, *, batch_size=4, k=10, in_memory_bytes=1 << 30):
    logits = ReferenceLogits(in_memory_bytes)
    chunked_perplexity(
        model, rows, bos_in_tokens=False, batch_size=batch_size,
        observer=BehaviourSums(logits, record=True),
    )  # fmt: skip
    compare = BehaviourSums(logits, record=False, top_k=k)
    with applied(model, condition.compressed_weights(model)):
        chunked_perplexity(
            model, rows, bos_in_tokens=False, batch_size=batch_size, observer=compare
        )
    logits.close()
    return compare.result()


@pytest.mark.parametrize("condition", [RTN(4), MagnitudePrune(0.5)])
def test_equals_a_dense_float64_computation(neox_model, neox_tokens, condition):
    import copy

    compressed = copy.deepcopy(neox_model)
    with torch.no_grad():
        for name, weight in condition.compressed_weights(neox_model).items():
            compressed.get_parameter(name).copy_(weight)
    kl, reverse, top1, overlap, change = dense_behaviour(neox_model, compressed, neox_tokens, 10)
    result = measured(neox_model, neox_tokens, condition)
    assert kl > 1e-3 and top1 < 1  # the condition changes behaviour: the test can fail
    assert result.kl == pytest.approx(kl, abs=1e-10, rel=0)
    assert result.kl_reverse == pytest.approx(reverse, abs=1e-10, rel=0)
    assert result.top1_agreement == pytest.approx(top1, abs=1e-10, rel=0)
    assert result.topk_token_overlap == pytest.approx(overlap, abs=1e-10, rel=0)
    assert result.top_prob_change == pytest.approx(change, abs=1e-10, rel=0)
    assert result.n_positions == neox_tokens.shape[0] * (neox_tokens.shape[1] - 1)
    low, high = result.kl_ci
    assert low <= result.kl <= high


def test_null_condition_is_exactly_zero_and_one(neox_model, neox_tokens):
    result = measured(neox_model, neox_tokens, MagnitudePrune(0.0))
    assert result.kl == 0.0 and result.kl_reverse == 0.0
    assert result.top1_agreement == 1.0 and result.topk_token_overlap == 1.0
    assert result.top_prob_change == 0.0


def test_spilled_logits_give_the_same_numbers(neox_model, neox_tokens):
    in_memory = measured(neox_model, neox_tokens, RTN(4))
    on_disk = measured(neox_model, neox_tokens, RTN(4), in_memory_bytes=0)
    assert on_disk == in_memory


def test_other_tokens_than_the_reference_are_refused(neox_model, neox_tokens):
    logits = ReferenceLogits()
    chunked_perplexity(
        neox_model, neox_tokens, bos_in_tokens=False, observer=BehaviourSums(logits, record=True)
    )
    with pytest.raises(ValueError, match="other tokens than the reference"):
        chunked_perplexity(
            neox_model, neox_tokens.flip(0), bos_in_tokens=False,
            observer=BehaviourSums(logits, record=False),
        )  # fmt: skip
