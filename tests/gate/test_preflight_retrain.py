"""--qdm-retrain-sae and friends: parsed, and refused at configure time in one line."""

from __future__ import annotations

import pytest

from pytest_qdm.gate.preflight import preflight
from pytest_qdm.options_parse import build_options


def test_retrain_options_parse_and_default_to_the_match_width():
    options = build_options({"model": "tiny", "retrain-sae": "4096", "retrain-init": "random"})
    assert options.retrain_sae == 4096 and options.retrain_init == "random"
    assert options.retrained_condition == "rtn-int6"
    named = build_options({"model": "tiny", "retrain-sae": "4096", "retrain-condition": "int4"})
    assert named.retrained_condition == "rtn-int4"
    assert build_options({"model": "tiny"}).retrained_condition is None


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        ({"retrain-sae": "100"}, "--qdm-retrain-sae: a retraining budget of 100 tokens is below"),
        ({"retrain-init": "zeros"}, "--qdm-retrain-init: "),
    ],
)
def test_bad_retrain_options_are_one_line(raw, start):
    with pytest.raises(ValueError) as error:
        build_options({"model": "tiny", **raw})
    assert str(error.value).startswith(start) and "\n" not in str(error.value)


def test_retraining_on_a_condition_not_audited_is_refused_before_loading(tmp_path):
    options = build_options(
        {
            "model": "tiny",
            "retrain-sae": "4096",
            "retrain-condition": "int3",
            "report-dir": str(tmp_path / "r"),
            "cache-dir": str(tmp_path / "c"),
        }
    )
    with pytest.raises(ValueError, match=r"^--qdm-retrain-condition: condition 'rtn-int3' is not"):
        preflight(options)
