"""Progress of long passes: a rich bar on a terminal, plain lines in CI logs.

Without a terminal (redirected output, CI), a line such as
``QDM protocol: 40% (1,200/3,000 steps) 0:00:12 elapsed, ETA 0:00:18`` is written to
stderr every 10 % of the work or every 30 s, whichever comes first. The ETA uses the
average rate since the start, so it does not jump with one slow batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``: a bar on a terminal, plain lines otherwise, nothing when
    ``enabled`` is False or on a torch.distributed rank other than 0."""
    from pytest_qdm.stream.distributed import is_main_process

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
