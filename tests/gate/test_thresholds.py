"""Threshold expressions: parsing, messages and errors (no model needed)."""

from __future__ import annotations

import pytest

from pytest_qdm.compress.names import condition_name
from pytest_qdm.gate.thresholds import parse_baseline, parse_gate


@pytest.mark.parametrize(
    ("text", "condition", "bound"),
    [
        ("int6:0.6", "rtn-int6", 60.0),
        ("int6:60%", "rtn-int6", 60.0),
        ("rtn-int4:0.25", "rtn-int4", 25.0),
        ("*:0.5", "*", 50.0),
    ],
)
def test_gate_expressions_parse_to_percent_bounds(text, condition, bound):
    check = parse_gate("min_survived", text)
    assert (check.condition, check.metric, check.direction) == (condition, "survived_pct", "min")
    assert check.bound == pytest.approx(bound)


def test_perplexity_change_bound_stays_a_fraction():
    check = parse_gate("max_ppl_change", "int6:5%")
    assert (check.metric, check.direction, check.bound) == ("ppl_chunked_change", "max", 0.05)


def test_gate_failure_message_names_metric_value_and_bound():
    check = parse_gate("min_survived", "int6:0.6")
    assert check.describe(62.0) == (True, "rtn-int6 survived_pct = 62%, required >= 60%: ok")
    passed, message = check.describe(41.5)
    assert not passed and message == "rtn-int6 survived_pct = 41.5%, required >= 60%: FAILED"
    assert check.describe(None)[0] is False


@pytest.mark.parametrize(
    "text", ["int6", "int6:", "int6:abc", "int6=0.6", "int6:1.5", "int9:0.5", "int1:0.5"]
)
def test_malformed_gate_expressions_are_refused(text):
    with pytest.raises(ValueError, match="int6:0.6|fraction|bits must be in 2..8"):
        parse_gate("min_survived", text)


def test_baseline_expressions():
    check = parse_baseline("survived:-2%")
    assert (check.condition, check.metric, check.bad_direction, check.amount) == (
        None,
        "survived",
        "-",
        2.0,
    )
    assert check.compare("rtn-int6", 59.0, 60.0) is None
    message = check.compare("rtn-int6", 57.5, 60.0)
    assert message == "rtn-int6 survived: 57.5 vs baseline 60 (-2.5, allowed -2) [survived:-2%]"
    scoped = parse_baseline("int4.damaged:+3")
    assert scoped.condition == "rtn-int4" and scoped.compare("rtn-int4", 14.0, 10.0)
    assert parse_baseline("auc:-0.02").compare("report", 0.95, 0.96) is None


@pytest.mark.parametrize("text", ["survived", "survived:2%", "bogus:-1", "int6.survived", ""])
def test_malformed_baseline_expressions_are_refused(text):
    with pytest.raises(ValueError, match="METRIC:±AMOUNT"):
        parse_baseline(text)


def test_condition_name_shorthand():
    assert condition_name("int6") == "rtn-int6"
    assert condition_name("int4-g128") == "rtn-int4-g128"
    assert condition_name("prune-0.2") == "prune-0.2"
    assert (condition_name("nf4"), condition_name("fp8")) == ("nf4-b64", "fp8-e4m3")


def test_python_thresholds_take_the_command_line_forms():
    from pytest_qdm.gate.thresholds import as_fraction

    assert as_fraction("min_survived", 0.6) == as_fraction("min_survived", "60%") == 0.6
    assert as_fraction("max_damaged", "0.25") == 0.25
    for bad, why in [("x", "a fraction like 0.6"), (True, "a fraction"), ("160%", r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=f"min_survived must .*{why}"):
            as_fraction("min_survived", bad)


def test_marker_bits_take_an_int_or_a_list():
    from pytest_qdm.gate.session import marker_bits

    assert marker_bits(6) == (6,) and marker_bits([8, 6]) == (8, 6) and marker_bits(None) == ()
    for bad in (9, True, ["6"]):
        with pytest.raises(ValueError, match="bits must be integers in 2..8"):
            marker_bits(bad)


def test_an_out_of_range_bound_names_its_option():
    from pytest_qdm.options_parse import build_options

    with pytest.raises(
        ValueError, match=r"^--qdm-min-survived: 'int6:1.5': the bound is a fraction"
    ):
        build_options({"model": "tiny", "min-survived": ["int6:1.5"]})
