"""Progress of long passes: a rich bar on a terminal, plain lines in CI logs.

Without a terminal (redirected output, CI), a line such as
``QDM protocol: 40% (1,200/3,000 steps) 0:00:12 elapsed, ETA 0:00:18`` is written to
stderr every 10 % of the work or every 30 s, whichever comes first. The ETA uses the
average rate since the start, so it does not jump with one slow batch.

Inside :func:`run_progress` (the whole protocol run), every phase's bar joins ONE display:
``QDM gate: 40% [protocol] 0:00:12 elapsed, ETA 0:00:18``, where each phase counts for its
planned cost (tokens forwarded times the measured cost per token of that kind of pass) and
the ETA is re-estimated from the share of that cost done so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

LINE_EVERY_FRACTION = 0.1
LINE_EVERY_SECONDS = 30.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class PlainProgress:
    """``advance(n=1)`` that writes a line at bounded rate (see the module doc)."""

    def __init__(self, description: str, total: int, stream=None, clock=time.monotonic):
        self.description, self.total, self.done = description, max(int(total), 1), 0
        self.stream, self.clock = stream or sys.stderr, clock
        self.started = self.last_time = clock()
        self.last_fraction = 0.0

    def __call__(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        now, fraction = self.clock(), self.done / self.total
        due = fraction - self.last_fraction >= LINE_EVERY_FRACTION - 1e-12
        if due or now - self.last_time >= LINE_EVERY_SECONDS or self.done == self.total:
            self.last_time, self.last_fraction = now, fraction
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """The work ended short of ``total`` (a search that stopped early): say it is done."""
        if 0 < self.done < self.total:
            self.total = self.done
            self(0)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        tail = "done" if self.done == self.total else f"ETA {_clock(eta)}"
        return (
            f"{self.description}: {self.done / self.total:.0%} "
            f"({self.done:,}/{self.total:,} steps) {_clock(elapsed)} elapsed, {tail}"
        )


# measured seconds per planned token of each phase, relative to the feature pass
# (`pytest --qdm-model tiny --qdm-quick`, 2-core CPU: perplexity 650 s for 13 x 2,048
# planned tokens, protocol 465 s for 7 x 8,192, second-layer audit 100 s for 6 x 8,192).
# Perplexity runs every layer with logits, sliding windows and the SAE splice; the feature
# pass stops at the read-out; the second layer's has no lenses.
PHASE_COST = {"QDM perplexity": 3.0, "QDM protocol": 1.0, "QDM audit": 0.25}
UNPLANNED_SHARE = 0.1  # a phase outside the plan counts for this share of the plan


class RunProgress:
    """One display for the phases of a run: ``plan`` maps each phase's description to
    its estimated cost; ``show(fraction, phase, now)`` draws the overall state."""

    def __init__(self, plan: Mapping[str, float], show, clock=time.monotonic):
        self.plan = {k: float(v) for k, v in plan.items() if v > 0}
        self.total = sum(self.plan.values()) or 1.0
        self.done_cost, self.show, self.clock = 0.0, show, clock
        self.started = clock()

    @contextmanager
    def phase(self, description: str, steps: int) -> Iterator[Callable[[int], None]]:
        """``advance(n=1)`` of one phase; its cost is planned, or a share of the plan."""
        cost = self.plan.pop(description, None)
        if cost is None:
            cost = UNPLANNED_SHARE * self.total
            self.total += cost
        done, steps = [0], max(int(steps), 1)
        label = description.removeprefix("QDM ")

        def advance(n: int = 1) -> None:
            done[0] = min(done[0] + n, steps)
            self.show(self.fraction(cost * done[0] / steps), label, self.clock())

        try:
            yield advance
        finally:
            self.done_cost += cost  # a phase that ends early (the pruning search) is done

    def fraction(self, in_phase: float = 0.0) -> float:
        return min((self.done_cost + in_phase) / self.total, 1.0)

    def eta(self, fraction: float, now: float) -> float:
        """Seconds left: the time taken so far per share of the planned cost done."""
        elapsed = now - self.started
        return elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")


class PlainRunLines:
    """``show`` for :class:`RunProgress` without a terminal: a line at most every 10 % or
    every 30 s, and one when the run ends."""

    def __init__(self, title: str, stream=None):
        self.title, self.stream = title, stream or sys.stderr
        self.last_fraction, self.last_time, self.run = 0.0, None, None

    def __call__(self, fraction: float, phase: str, now: float) -> None:
        if self.last_time is None:
            self.last_time = self.run.started
        due = fraction - self.last_fraction >= LINE_EVERY_FRACTION - 1e-12
        if due or now - self.last_time >= LINE_EVERY_SECONDS:
            self.last_time, self.last_fraction = now, fraction
            self.write(fraction, phase, now)

    def write(self, fraction: float, phase: str, now: float) -> None:
        elapsed = now - self.run.started
        tail = "done" if fraction >= 1 else f"ETA {_clock(self.run.eta(fraction, now))}"
        line = f"{self.title}: {fraction:.0%} [{phase}] {_clock(elapsed)} elapsed, {tail}"
        self.stream.write(line + "\n")
        self.stream.flush()


_RUN: ContextVar[RunProgress | None] = ContextVar("qdm_run_progress", default=None)


@contextmanager
def run_progress(
    title: str, plan: Mapping[str, float], enabled: bool, stream=None, clock=time.monotonic
) -> Iterator[RunProgress | None]:
    """One progress display for every :func:`progress_bar` opened in the body (see the
    module doc); nothing when ``enabled`` is False, on a rank other than 0, or inside
    another run's display."""
    from pytest_qdm.stream.distributed import is_main_process

    if not (enabled and is_main_process()) or _RUN.get() is not None:
        yield None
        return
    console = Console(stderr=True)
    if stream is not None or not console.is_terminal:
        lines = PlainRunLines(title, stream)
        run = lines.run = RunProgress(plan, lines, clock)
        token = _RUN.set(run)
        try:
            yield run
        finally:
            _RUN.reset(token)
        lines.write(1.0, "done", clock())
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% [dim]{task.fields[phase]}[/] ETA {task.fields[eta]}"),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(title, total=1000, phase="", eta="-:--:--")

        def show(fraction: float, phase: str, now: float) -> None:
            eta = run.eta(fraction, now)
            shown = "-:--:--" if eta != eta else _clock(eta)
            bar.update(task, completed=round(1000 * fraction), phase=phase, eta=shown)

        run = RunProgress(plan, show, clock)
        token = _RUN.set(run)
        try:
            yield run
        finally:
            _RUN.reset(token)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``: a bar on a terminal, plain lines otherwise, nothing when
    ``enabled`` is False or on a torch.distributed rank other than 0; inside
    :func:`run_progress`, a phase of the run's one display."""
    from pytest_qdm.stream.distributed import is_main_process

    run = _RUN.get()
    if run is not None:
        with run.phase(description, total) as advance:
            yield advance
        return
    enabled = enabled and is_main_process()
    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        plain = PlainProgress(description, total)
        yield plain
        plain.finish()
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
