"""The retrained-SAE baseline's checks that need neither torch nor a model (configure time)."""

from __future__ import annotations

from numbers import Integral

RETRAIN_INITS = ("reference", "random")
#: Activation vectors per trainer step; the smallest budget is one step.
DEFAULT_BATCH_TOKENS = 1024


def check_budget(budget, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> int:
    """The token budget, if it is at least one trainer step (ValueError in one line)."""
    if isinstance(budget, bool) or not isinstance(budget, Integral):
        raise TypeError(f"the retraining budget must be a number of tokens, got {budget!r}")
    if budget < batch_tokens:
        raise ValueError(
            f"a retraining budget of {budget} tokens is below the trainer's minimum of one "
            f"batch ({batch_tokens} tokens); give at least {batch_tokens}"
        )
    return int(budget)


def check_audited(name: str, audited) -> None:
    """``name`` is one of the ``audited`` condition names (ValueError in one line)."""
    if name not in audited:
        raise ValueError(
            f"condition {name!r} is not audited (audited: {sorted(audited)}); "
            "retrain on one of those"
        )
