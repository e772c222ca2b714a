"""The claims file (TOML) and its refusals: one line each, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_qdm.claims.check import check_targets
from pytest_qdm.claims.files import load_claims

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DETECTS = """
[[claim]]
id = "{id}"
kind = "detects"
feature = {feature}
positive = {positive}
negative = ["prose"]
min_auroc = 0.8
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "claims.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str, d_sae: int | None = 2048) -> str:
    with pytest.raises(ValueError) as error:
        load_claims(write(tmp_path, text), d_sae)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_shipped_claims_file_loads():
    claims = load_claims(EXAMPLES / "qdm-claims.toml", 2048)
    assert [c.kind for c in claims] == ["detects", "steers", "ablates", "probe", "survives"]
    detects = claims[0]
    assert detects.positive[0] == (EXAMPLES / "claims" / "code.txt").read_text().splitlines()[0]


def test_texts_inline_or_from_a_file_relative_to_the_claims_file(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "pos.txt").write_text("def f():\n\n  return 1\n")
    text = DETECTS.format(id="a", feature=1, positive='"texts/pos.txt"')
    (claim,) = load_claims(write(tmp_path, text), 2048)
    assert claim.positive == ["def f():", "  return 1"] and claim.negative == ["prose"]


def test_unknown_kind_names_the_closest(tmp_path):
    text = DETECTS.format(id="a", feature=1, positive='["x"]').replace('"detects"', '"detect"')
    assert "unknown kind 'detect'" in (m := refusal(tmp_path, text)) and "'detects'?" in m


def test_unknown_field_names_the_closest(tmp_path):
    text = DETECTS.format(id="a", feature=1, positive='["x"]').replace("min_auroc", "min_aurc")
    assert "unknown field 'min_aurc'; did you mean 'min_auroc'?" in refusal(tmp_path, text)


def test_feature_outside_the_sae(tmp_path):
    text = DETECTS.format(id="a", feature=4096, positive='["x"]')
    assert "feature 4096 is outside the SAE (0..2047)" in refusal(tmp_path, text)


def test_empty_positive_set(tmp_path):
    text = DETECTS.format(id="a", feature=1, positive="[]")
    assert "claim 'a': positive is empty" in refusal(tmp_path, text)


def test_missing_text_file(tmp_path):
    text = DETECTS.format(id="a", feature=1, positive='"nope.txt"')
    assert "positive: text file" in (m := refusal(tmp_path, text)) and "does not exist" in m


def test_duplicate_ids(tmp_path):
    one = DETECTS.format(id="a", feature=1, positive='["x"]')
    assert "duplicate claim id 'a'" in refusal(tmp_path, one + one)


def test_single_class_probe(tmp_path):
    text = '[[claim]]\nid = "p"\nkind = "probe"\nmin_score = 0.8\n[claim.classes]\ncode = ["x"]\n'
    assert "a probe needs at least two classes" in refusal(tmp_path, text)


def test_target_with_no_tokens():
    from pytest_qdm.claims import claim_from_dict
    from pytest_qdm.zoo import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    claim = claim_from_dict(
        dict(kind="steers", id="s", feature=1, alpha=1.0, prompts=["x"], targets=["def", ""])
    )
    with pytest.raises(ValueError, match="target '' tokenizes to no token"):
        check_targets([claim], lambda t: tokenizer(t, add_special_tokens=False).input_ids)


def test_not_toml_and_no_claims(tmp_path):
    assert "is not valid TOML" in refusal(tmp_path, "[[claim]\n")
    assert "expected [[claim]] tables only, found 'claims'" in refusal(tmp_path, "[claims]\n")
