"""Data-parallel runs on torch.distributed: which share of the work this rank takes, and
gathering every rank's result (docs/distributed.md).

When a process group with more than one rank is initialised (e.g. under ``torchrun``),
rank r takes a contiguous, deterministic share of the work (:func:`local_share`,
:func:`local_rows`), runs the ordinary pass on it, and every rank gathers every rank's
state and merges them in rank order with Chan's merge (``EngineState.merge``), never a
float all-reduce, so every rank holds the same result and it does not depend on timing.
Without a process group, or with one rank, every function here is the identity: the
single-process code path, bit for bit.

Every exchange is one ``all_gather_object`` of (ok, payload) on a gloo group of its own
with a bounded timeout (:data:`GATHER_TIMEOUT_S`): a rank that raised sends its error
instead of its payload, so every rank raises it (:class:`RankFailed`) and none waits for
it. Importing this module imports no torch.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

    from pytest_qdm.stream.engine import EngineState

T = TypeVar("T")
S = TypeVar("S", bound=Sequence)

GATHER_TIMEOUT_S = 1800.0  # longest wait for the slowest rank at one exchange
_gather_group: tuple[object, object] | None = None  # (the default group, our gloo group)


class RankFailed(RuntimeError):
    """Another rank raised (its error is in the message) or did not answer in time."""


def _multi_process():
    """``torch.distributed`` when a process group of more than one rank is initialised,
    else None (torch is not imported to find out)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


def rank_and_size() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a multi-process run."""
    dist = _multi_process()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def is_main_process() -> bool:
    """True on rank 0 and outside a multi-process run: the process that writes files.

    Before the process group is up (pytest's configure), torchrun's ``RANK`` decides.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def share_bounds(n_items: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of ``n_items``: the first
    ``n_items % size`` ranks take one more."""
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def local_share(items: S) -> S:
    """This rank's contiguous share of ``items`` (a sequence, range or tensor rows); all of
    them outside a multi-process run."""
    rank, size = rank_and_size()
    if size == 1:
        return items
    start, stop = share_bounds(len(items), rank, size)
    return items[start:stop]


def local_rows(n_rows: int, batch_size: int) -> slice:
    """This rank's share of ``n_rows`` token rows in whole batches of ``batch_size`` rows,
    so each batch is the one a single process runs (the last rank's may be shorter)."""
    rank, size = rank_and_size()
    if size == 1:
        return slice(0, n_rows)
    start, stop = share_bounds(-(-n_rows // batch_size), rank, size)
    return slice(start * batch_size, min(stop * batch_size, n_rows))


def init_from_torchrun() -> None:
    """Under torchrun (``WORLD_SIZE`` > 1) with no process group yet: make ``cuda`` this
    rank's GPU (``LOCAL_RANK``; ranks share GPUs when there are fewer) and initialise a gloo
    process group from the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("gloo")


def gathered(compute: Callable[[], T], device: torch.device | str | None = None) -> list[T]:
    """Every rank's ``compute()`` in rank order, on every rank (``[compute()]`` outside a
    multi-process run); tensors in it arrive on ``device`` (default CPU)."""
    dist = _multi_process()
    if dist is None:
        return [compute()]
    return [_loads(payload, device) for payload in _run_and_exchange(dist, compute, _dumps)]


def merged_state(compute: Callable[[], EngineState], device: torch.device | str) -> EngineState:
    """Every rank's engine state merged in rank order (``compute()`` itself outside a
    multi-process run): the same on every rank."""
    from functools import reduce

    from pytest_qdm.stream.engine import EngineState

    return reduce(EngineState.merge, gathered(compute, device))


def concatenated(compute: Callable[[], list[T]], device: torch.device | str) -> list[T]:
    """Every rank's list, concatenated in rank order (``compute()`` outside)."""
    return [item for part in gathered(compute, device) for item in part]


def summed(compute: Callable[[], tuple]) -> tuple:
    """Every rank's tuple of numbers, summed element-wise in rank order (``compute()``
    outside a multi-process run)."""
    parts = gathered(compute)
    if len(parts) == 1:
        return parts[0]
    return tuple(sum(column) for column in zip(*parts, strict=True))


def from_main(compute: Callable[[], T]) -> T:
    """Rank 0's ``compute()``, run on rank 0 only and handed to every rank (``compute()``
    outside a multi-process run); for work with side effects, such as writing files."""
    dist = _multi_process()
    if dist is None:
        return compute()
    return gathered(compute if dist.get_rank() == 0 else lambda: None)[0]


def agreed(compute: Callable[[], T]) -> T:
    """``compute()`` on every rank, then every rank learns whether any rank raised
    (wrap a whole collective computation in it, so a failure anywhere ends every rank)."""
    dist = _multi_process()
    if dist is None:
        return compute()
    result = []
    _run_and_exchange(dist, lambda: result.append(compute()), lambda _: None)
    return result[0]


def _run_and_exchange(dist, compute: Callable, encode: Callable) -> list:
    """Run ``compute``, then exchange ``encode(result)`` or this rank's error with every
    rank; raise the first failed rank's error everywhere."""
    try:
        payload = encode(compute())
    except RankFailed:  # raised by an exchange: every rank knows already
        raise
    except Exception as error:
        _exchange(dist, (False, _describe(error)))
        raise
    return _exchange(dist, (True, payload))


def _exchange(dist, message: tuple[bool, object]) -> list:
    rank, size = dist.get_rank(), dist.get_world_size()
    answers: list = [None] * size
    try:
        dist.all_gather_object(answers, message, group=_group(dist))
    except RuntimeError as error:  # gloo's timeout or a peer that went away
        raise RankFailed(
            f"rank {rank} of {size}: not every rank answered within {GATHER_TIMEOUT_S:g} s "
            f"(another rank failed or is stuck): {error}"
        ) from error
    failed = [(r, text) for r, (ok, text) in enumerate(answers) if not ok]
    if failed and not message[0]:
        return answers  # this rank failed: the caller raises its own error
    if failed:
        r, text = failed[0]
        raise RankFailed(f"rank {r} of {size} failed: {text}")
    return [payload for _, payload in answers]


def _group(dist):
    """A gloo group over every rank, with our timeout, made once per default group."""
    global _gather_group
    if _gather_group is None or _gather_group[0] is not dist.group.WORLD:
        timeout = timedelta(seconds=GATHER_TIMEOUT_S)
        _gather_group = (dist.group.WORLD, dist.new_group(backend="gloo", timeout=timeout))
    return _gather_group[1]


def _describe(error: BaseException) -> str:
    """The error's line, then its traceback."""
    line = "".join(traceback.format_exception_only(error)).strip()
    return f"{line}\n\n{''.join(traceback.format_exception(error)).rstrip()}"


def _dumps(value: object) -> bytes:
    from pytest_qdm.tensorfile import dumps

    return dumps(value)


def _loads(data: bytes, device: torch.device | str | None) -> object:
    from pytest_qdm.tensorfile import loads

    return loads(data, device or "cpu")
