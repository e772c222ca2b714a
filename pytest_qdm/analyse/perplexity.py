"""Token-level perplexity, exp(mean cross-entropy), under two explicit protocols.

Perplexity is token-weighted: the negative log-likelihoods of every scored position are
summed in float64 and divided by their count; BOS handling is explicit and recorded.

- Chunked: non-overlapping blocks [n, ctx], one forward each; position j is predicted from
  positions < j of the same block.
- Sliding window: windows of ``window`` tokens advanced by ``stride`` over a 1-D stream;
  each window scores only the positions it newly introduces.

A condition is scored with its weights swapped in (:func:`perplexity_under`). Under
torch.distributed both are collective (docs/definitions.md, "Perplexity").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from pytest_qdm.schema.analyses import DomainPerplexity, PerplexityResult

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

    from pytest_qdm.compress.conditions import Condition
    from pytest_qdm.stream.domains import RowDomains


def relative_change(compressed: float, reference: float) -> float:
    """PPL_C / PPL_FP - 1 (positive: the compressed model is worse)."""
    if not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"reference perplexity must be finite and > 0, got {reference!r}")
    if not (math.isfinite(compressed) and compressed > 0):
        raise ValueError(f"compressed perplexity must be finite and > 0, got {compressed!r}")
    return compressed / reference - 1.0


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_tokens(model: HookedTransformer, tokens: torch.Tensor, ndim: int, what: str) -> None:
    import torch

    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != ndim or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"{what} must be an integer tensor with {ndim} dimension(s), "
            f"got dtype {tokens.dtype} and shape {tuple(tokens.shape)}"
        )
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if tokens.numel() and (
        int(tokens.min()) < 0 or (d_vocab is not None and int(tokens.max()) >= d_vocab)
    ):
        raise ValueError(
            f"{what} holds ids in [{int(tokens.min())}, {int(tokens.max())}], "
            f"expected ids in [0, {d_vocab})"
        )


def _check_context(model: HookedTransformer, length: int, what: str) -> None:
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and length > n_ctx:
        raise ValueError(f"{what} is {length} tokens, longer than the model's n_ctx={n_ctx}")


class BatchObserver(Protocol):
    """Rides on a perplexity forward: its hooks run in it, then it sees the batch's NLL."""

    def fwd_hooks(self) -> list[tuple[str, Callable]]: ...

    def observe(self, batch: torch.Tensor, nll: torch.Tensor) -> None: ...

    # Optional: ``observe_logits(batch, logits)`` sees the batch's logits [b, pos-1, vocab]
    # (float32) of the scored positions (analyse/behaviour.py).

    def sum_over_ranks(self) -> None:
        """Under torch.distributed, where each rank saw a share of the batches: add every
        rank's sums."""


def _token_nll(
    model: HookedTransformer, batch: torch.Tensor, observer: BatchObserver | None = None
) -> torch.Tensor:
    """NLL [b, pos-1] (float32, on CPU) of token j+1 given tokens <= j, for each row."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = batch.to(device)
    if observer is None:
        logits = model(batch, return_type="logits")
    else:
        logits = model.run_with_hooks(batch, return_type="logits", fwd_hooks=observer.fwd_hooks())
    logits = logits[:, :-1].float()  # on the last block's device, where a model is split
    if observer is not None and hasattr(observer, "observe_logits"):
        observer.observe_logits(batch, logits)
    targets = batch[:, 1:].to(logits.device)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).reshape(batch.shape[0], -1)
    if observer is not None:
        observer.observe(batch, nll)
    return nll.to(device="cpu", dtype=torch.float32)


def _perplexity(mean_nll: float) -> float | None:
    """exp(mean NLL), None where it overflows."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return None


def _result(total: float, count: int, **fields) -> PerplexityResult:
    if count == 0:
        raise ValueError("no token positions were scored; give at least two tokens")
    mean_nll = total / count
    return PerplexityResult(
        perplexity=_perplexity(mean_nll), mean_nll=mean_nll, n_scored_tokens=count, **fields
    )


def _domain_result(total: float, count: int) -> DomainPerplexity:
    if not count:
        return DomainPerplexity(perplexity=None, mean_nll=None, n_scored_tokens=0)
    mean_nll = total / count
    return DomainPerplexity(
        perplexity=_perplexity(mean_nll), mean_nll=mean_nll, n_scored_tokens=count
    )


def _checked_blocks(
    model: HookedTransformer, tokens: torch.Tensor, bos_in_tokens: bool, batch_size: int
) -> int | None:
    """Checks the arguments of :func:`chunked_perplexity`; the BOS id of column 0, if any."""
    if not isinstance(bos_in_tokens, bool):
        raise TypeError(f"bos_in_tokens must be True or False, got {bos_in_tokens!r}")
    _check_int("batch_size", batch_size, 1)
    _check_tokens(model, tokens, 2, "tokens (chunked blocks [n, ctx])")
    n_blocks, ctx = tokens.shape
    if n_blocks < 1 or ctx < 2:
        raise ValueError(f"tokens must have shape [n >= 1, ctx >= 2], got {tuple(tokens.shape)}")
    _check_context(model, ctx, "the block length")
    if not bos_in_tokens:
        return None
    first = tokens[:, 0]
    if bool((first != first[0]).any()):
        raise ValueError(
            "bos_in_tokens=True but column 0 holds several different ids "
            f"({sorted(set(first.tolist()))[:5]}...); expected one BOS id in every row"
        )
    return int(first[0])


def _score_blocks(
    model: HookedTransformer,
    tokens: torch.Tensor,
    batch_size: int,
    observer: BatchObserver | None,
    domains: RowDomains | None,
) -> tuple[float, int, torch.Tensor, torch.Tensor]:
    """This rank's share of the blocks: NLL sum and count, in total and per domain."""
    import torch

    from pytest_qdm.stream.distributed import local_share

    names = domains.names if domains is not None else ()
    total, count = 0.0, 0
    by_domain = torch.zeros(len(names), dtype=torch.float64)
    counted = torch.zeros(len(names), dtype=torch.long)
    with torch.inference_mode():
        for start in local_share(range(0, tokens.shape[0], batch_size)):
            nll = _token_nll(model, tokens[start : start + batch_size], observer)
            total += float(nll.double().sum())
            count += nll.numel()
            if domains is not None:
                codes = domains.codes[start : start + nll.shape[0]]
                by_domain.index_add_(0, codes, nll.double().sum(1))
                counted.index_add_(0, codes, torch.full_like(codes, nll.shape[1]))
    return total, count, by_domain, counted


def chunked_perplexity(
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    bos_in_tokens: bool,
    batch_size: int = 8,
    observer: BatchObserver | None = None,
    domains: RowDomains | None = None,
) -> PerplexityResult:
    """Perplexity of non-overlapping blocks ``tokens`` [n, ctx] (one forward per block).

    ``observer`` (e.g. :class:`pytest_qdm.transfer.TransferSums`) measures more on the same
    forwards. ``domains``: the rows' domains; each domain's perplexity comes from the same
    forwards (``result.by_domain``).

    Every position 1..ctx-1 of each block is scored from the positions before it, so
    n * (ctx - 1) tokens are scored either way. ``bos_in_tokens=True`` says column 0 is
    a BOS token (as :func:`pytest_qdm.load.tokens.chunk_tokens` writes it when asked): then
    every corpus token is scored. ``False``: column 0 is a corpus token, and the first
    token of each block is not scored (it has no context).
    """
    from pytest_qdm.stream.distributed import summed

    bos_token_id = _checked_blocks(model, tokens, bos_in_tokens, batch_size)
    n_blocks, ctx = tokens.shape
    names = domains.names if domains is not None else ()
    total, count, by_domain, counted = summed(
        lambda: _score_blocks(model, tokens, batch_size, observer, domains)
    )
    if observer is not None:
        observer.sum_over_ranks()
    if bos_in_tokens:
        note = (
            f"column 0 is BOS (id {bos_token_id}); all {count} corpus tokens of "
            f"{n_blocks} blocks scored, each from the positions before it in its block"
        )
    else:
        note = (
            f"no BOS; the first token of each of {n_blocks} blocks is not scored; "
            f"{count} of {n_blocks * ctx} tokens scored"
        )
    return _result(
        total,
        count,
        by_domain={
            name: _domain_result(float(by_domain[i]), int(counted[i]))
            for i, name in enumerate(names)
        },
        protocol="chunked",
        context_length=ctx,
        stride=None,
        prepend_bos=bos_in_tokens,
        bos_token_id=bos_token_id,
        note=note,
    )


def _windows(n_ids: int, span: int, stride: int, offset: int) -> Iterator[tuple[int, int]]:
    """(start, first scored window index) of each window over a stream of n_ids tokens.

    Windows cover ``span`` corpus tokens; window index j holds corpus token
    start + j - offset. A final window ending at the last token covers any tail.
    """
    if n_ids <= span:
        yield 0, 1
        return
    end = 0
    start = 0
    while start + span <= n_ids:
        yield start, max(end - start + offset, 1)
        end = start + span
        start += stride
    if end < n_ids:
        start = n_ids - span
        yield start, end - start + offset


def _checked_stream(
    model: HookedTransformer,
    ids: torch.Tensor,
    window: int,
    stride: int,
    bos_token_id: int | None,
    batch_size: int,
) -> None:
    """Checks the arguments of :func:`sliding_window_perplexity` (one line per mistake)."""
    _check_int("window", window, 2)
    _check_int("stride", stride, 1)
    _check_int("batch_size", batch_size, 1)
    if bos_token_id is not None:
        _check_int("bos_token_id", bos_token_id, 0)
    _check_tokens(model, ids, 1, "ids (a token stream)")
    offset = 0 if bos_token_id is None else 1
    span = window - offset
    if stride > span:
        raise ValueError(
            f"stride={stride} would skip tokens: it must be at most the {span} corpus "
            f"tokens of a window (window={window}" + (", one of them BOS)" if offset else ")")
        )
    _check_context(model, window, "the window")
    n_ids = ids.numel()
    if n_ids < 2 - offset:
        raise ValueError(f"ids holds {n_ids} tokens; at least {2 - offset} are needed")


def _score_windows(
    model: HookedTransformer,
    ids: torch.Tensor,
    plan: list[tuple[int, int]],
    span: int,
    bos_token_id: int | None,
    batch_size: int,
) -> tuple[float, int]:
    """This rank's share of the windows: the NLL sum and count of the positions each scores."""
    import torch

    from pytest_qdm.stream.distributed import local_share

    total, count = 0.0, 0
    with torch.inference_mode():
        for first in local_share(range(0, len(plan), batch_size)):
            chunk = plan[first : first + batch_size]
            rows = torch.stack([ids[s : s + span] for s, _ in chunk])
            if bos_token_id is not None:
                bos = torch.full((rows.shape[0], 1), bos_token_id, dtype=rows.dtype)
                rows = torch.cat([bos, rows], dim=1)
            nll = _token_nll(model, rows)  # column j-1 is the NLL of window index j
            positions = torch.arange(1, rows.shape[1]).unsqueeze(0)
            scored = positions >= torch.tensor([j for _, j in chunk]).unsqueeze(1)
            total += float(nll.double()[scored].sum())
            count += int(scored.sum())
    return total, count


def sliding_window_perplexity(
    model: HookedTransformer,
    ids: torch.Tensor,
    *,
    window: int,
    stride: int,
    bos_token_id: int | None = None,
    batch_size: int = 8,
) -> PerplexityResult:
    """Perplexity of a 1-D token stream ``ids`` by a sliding window.

    Windows of ``window`` tokens start every ``stride`` corpus tokens; each scores only
    the positions it newly introduces (the first window scores all its predictable
    positions). Without BOS and with ``stride < window``, every token but the first is
    scored exactly once, with at least ``window - stride`` tokens of context. If the
    windows do not end on the last token, one more window ending there scores the tail.
    A stream shorter than the window is one window.

    With ``bos_token_id`` each window is BOS followed by ``window - 1`` corpus tokens
    (``window`` counts the BOS), every corpus token is scored (the first one from BOS
    alone), and ``stride`` may be at most ``window - 1``; ``stride == window - 1`` gives
    the non-overlapping blocks of :func:`chunked_perplexity` with BOS in column 0.
    Without BOS, ``stride == window`` gives the blocks of the chunked protocol without
    BOS (the first token of each window is then not scored).
    """
    from pytest_qdm.stream.distributed import summed

    _checked_stream(model, ids, window, stride, bos_token_id, batch_size)
    offset = 0 if bos_token_id is None else 1
    span = window - offset
    n_ids = ids.numel()
    ids = ids.to("cpu")
    plan = list(_windows(n_ids, span, stride, offset))
    total, count = summed(lambda: _score_windows(model, ids, plan, span, bos_token_id, batch_size))
    if offset:
        how = f"each window is BOS (id {bos_token_id}) + up to {span} corpus tokens"
    elif stride == span:
        how = "no BOS; windows do not overlap, so the first token of each is not scored"
    else:
        how = "no BOS; the first token of the stream is not scored"
    note = (
        f"{len(plan)} windows over {n_ids} tokens; {how}; {count} of {n_ids} tokens "
        "scored, each once, in the window that first introduces it"
    )
    return _result(
        total,
        count,
        protocol="sliding",
        context_length=window if n_ids > span else n_ids + offset,
        stride=stride,
        prepend_bos=bool(offset),
        bos_token_id=bos_token_id,
        note=note,
    )


def perplexity_under(
    model: HookedTransformer, condition: Condition, tokens: torch.Tensor, **kwargs
) -> PerplexityResult:
    """:func:`chunked_perplexity` of ``tokens`` with ``condition``'s weights swapped in
    (every layer; the model is restored on exit; a candidate on the forward path runs its
    own model). ``kwargs`` go to chunked_perplexity."""
    with condition.running(model, condition.compressed_weights(model)) as running:
        return chunked_perplexity(running, tokens, **kwargs)
