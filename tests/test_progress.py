"""Plain progress lines for CI logs: bounded rate, steady ETA."""

from __future__ import annotations

import io

from pytest_qdm.progress import PlainProgress


def test_lines_every_tenth_and_an_average_rate_eta():
    now = [0.0]
    out = io.StringIO()
    advance = PlainProgress("QDM protocol", 100, stream=out, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.1
        advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ..., 100 %: bounded, not one per step
    assert lines[0] == "QDM protocol: 10% (10/100 steps) 0:00:01 elapsed, ETA 0:00:09"
    assert lines[-1].endswith("0:00:10 elapsed, done")


def test_a_line_at_least_every_30_seconds():
    now = [0.0]
    out = io.StringIO()
    advance = PlainProgress("slow", 1000, stream=out, clock=lambda: now[0])
    now[0] = 31.0
    advance()  # 0.1 % done, but 31 s passed
    assert out.getvalue().startswith("slow: 0% (1/1,000 steps) 0:00:31 elapsed, ETA 8:36:")


def test_work_that_ends_early_ends_with_a_done_line():
    """The perplexity phase counts the pruning search's longest bisection; a search that
    stops sooner still ends its log with "done"."""
    out = io.StringIO()
    advance = PlainProgress("QDM perplexity", 21, stream=out, clock=lambda: 0.0)
    advance(15)
    advance.finish()
    assert out.getvalue().splitlines()[-1] == (
        "QDM perplexity: 100% (15/15 steps) 0:00:00 elapsed, done"
    )
    advance.finish()  # finishing twice, or finished work, writes nothing more
    assert len(out.getvalue().splitlines()) == 2
