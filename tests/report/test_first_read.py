"""What a first-time reader of the report meets: an ungated HTML page says so, and the
HTML tables keep numbers and intervals on one line."""

from __future__ import annotations

from pytest_qdm.report import html
from pytest_qdm.report._format import NOTHING_GATED


def test_an_ungated_html_page_says_nothing_was_gated():
    assert "nothing was gated: this run measured but set no bound" in html._verdicts([])
    assert NOTHING_GATED not in html._verdicts([("min_survived[rtn-int6]", True, "ok")])


def test_html_cells_do_not_wrap_numbers():
    # "100.0 [100.0-100.0]" and "PPL chunked (Δ)" wrapped with spare width (issue 29)
    assert "td { white-space: nowrap; }" in html.STYLE
    assert "th { white-space: pre;" in html.STYLE  # headers break only where they say so
    assert ".contexts td { text-align: left; font: 13px/1.6 ui-monospace, monospace; " in (
        html.STYLE
    )  # contexts still wrap (pre-wrap, the more specific rule)


def test_terminal_sweep_keeps_numbers_whole_and_folds_a_long_name():
    from rich.console import Console
    from rich.text import Text

    from pytest_qdm.report import _format as fmt
    from pytest_qdm.report import terminal

    table = terminal._table("Sweep", fmt.COMPACT_HEADERS)
    for name, interval in [("reference", "100.0–100.0"), ("candidate:" + "x" * 30, "80.1–83.0")]:
        cells = [name, "+0.07%", "+0.07%", "0.9500", "81.9", interval, "18.1", "0.0", "0", "3"]
        table.add_row(*(Text(c) for c in cells))
    terminal._keep_cells_whole(table)
    console = Console(width=80, record=True, force_terminal=False)
    console.print(table)
    text = console.export_text()
    assert "100.0–100.0" in text and "80.1–83.0" in text  # whole, each on one line
    assert all(len(line) <= 80 for line in text.splitlines())  # nothing cut off instead
