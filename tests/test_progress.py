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


def test_one_display_for_the_run_weighted_by_planned_cost():
    """Phases join one line stream: each counts for its planned cost, the ETA comes from
    the share done so far, and lines stay at most one per 10 % (or 30 s)."""
    from pytest_qdm.progress import progress_bar, run_progress

    now, out = [0.0], io.StringIO()
    plan = {"QDM perplexity": 1.0, "QDM protocol": 3.0}
    with run_progress("QDM gate", plan, True, stream=out, clock=lambda: now[0]):
        with progress_bar("QDM perplexity", 10, True) as tick:
            for _ in range(5):  # ends early: the phase still counts as done
                now[0] += 1.0
                tick()
        with progress_bar("QDM protocol", 30, True) as advance:
            for _ in range(30):
                now[0] += 1.0
                advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "QDM gate: 10% [perplexity] 0:00:04 elapsed, ETA 0:00:36"
    assert "[protocol]" in lines[1] and lines[-1] == "QDM gate: 100% [done] 0:00:35 elapsed, done"
    assert len(lines) <= 12
    # 25 % of the cost was the perplexity phase: after it, 5 of 30 protocol steps is 37.5 %
    assert lines[2] == "QDM gate: 38% [protocol] 0:00:10 elapsed, ETA 0:00:17"


def test_an_unplanned_phase_extends_the_plan_and_nested_runs_share_one_display():
    from pytest_qdm.progress import progress_bar, run_progress

    out = io.StringIO()
    plan = {"QDM protocol": 1.0}
    with run_progress("QDM gate", plan, True, stream=out, clock=lambda: 0.0) as run:
        with run_progress("inner", {}, True, stream=out) as inner:
            assert inner is None  # the outer display keeps the run
        with progress_bar("SAE pruning sweep", 4, True) as advance:
            advance(4)
            assert run.total == 1.1 and run.fraction() == 0.0  # 10 % more work, not done
    assert out.getvalue().splitlines() == ["QDM gate: 100% [done] 0:00:00 elapsed, done"]
