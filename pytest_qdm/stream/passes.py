"""A pass over token rows, as the config says (one pass, or two phases), and over shards.

The one-pass engine (stream/engine.py) and the two-phase engine (stream/two_phase.py) give
the same :class:`~pytest_qdm.stream.engine.EngineState`, bit for bit; the drivers
(run/audit.py, run/phases.py) call this module and do not choose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from pytest_qdm.stream.domains import RowDomains
from pytest_qdm.stream.drilldown import DrilldownState
from pytest_qdm.stream.engine import EngineState, one_pass, pass_steps
from pytest_qdm.stream.inputs import PassSpec
from pytest_qdm.stream.two_phase import run_two_phase


def run_pass(
    spec: PassSpec,
    tokens: torch.Tensor,
    advance: Callable[[int], None] = lambda n: None,
    drilldown: DrilldownState | None = None,
    domains: RowDomains | None = None,
) -> EngineState:
    """One pass of ``spec`` over ``tokens`` (:func:`~pytest_qdm.stream.engine.one_pass`); with
    ``spec.config.two_phase`` the reference is cached first and the conditions run one at a time
    against the cache (:func:`~pytest_qdm.stream.two_phase.run_two_phase`)."""
    engine = run_two_phase if spec.config.two_phase else one_pass
    return engine(spec, tokens, advance, drilldown, domains)


def run_shards(
    spec: PassSpec,
    shards: Iterable[torch.Tensor],
    advance: Callable[[int], None] = lambda n: None,
    finished: list[EngineState] | None = None,
    keep: Callable[[list[EngineState]], None] = lambda states: None,
    domains: Sequence[RowDomains | None] | None = None,
) -> list[EngineState]:
    """:func:`run_pass` over each shard of rows, in order. One drill-down is filled across
    them and held by the first state (the others hold none): ``merge_all`` of the states
    equals merging per-shard states, with one buffer instead of one per shard, and a shard
    only gathers the contexts that beat those of the shards before it.

    ``finished``: the states of the first shards from an interrupted run (they are not run
    again); ``keep(states)`` is called after each shard, e.g. to save them. ``domains``:
    each shard's row domains."""
    states: list[EngineState] = list(finished or [])
    shards = list(shards)
    domains = list(domains) if domains is not None else [None] * len(shards)
    for index, (rows, labels) in enumerate(zip(shards, domains, strict=True)):
        if index < len(states):
            advance(pass_steps(rows, spec.conditions, spec.config, labels))
            continue
        shared = states[0].drilldown if states else None
        state = run_pass(spec, rows, advance, shared, labels)
        if states:
            state.drilldown = None
        states.append(state)
        keep(states)
    return states
