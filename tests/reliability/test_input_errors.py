"""Every bad input is refused at configure time, before any model loads, in one line that
says what is wrong and what to do."""

from __future__ import annotations

import shutil

import pytest

from pytest_qdm.gate.preflight import preflight
from pytest_qdm.options_parse import build_options
from pytest_qdm.zoo import weights_dir

pytest_plugins = ["pytester"]


def refused(raw: dict, pattern: str) -> str:
    with pytest.raises(ValueError, match=pattern) as error:
        preflight(build_options({"model": "tiny", **raw}))
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def model_copy(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(weights_dir(), folder)
    return folder


@pytest.mark.parametrize("flag", ["bits", "tokens", "report-dir", "dataset"])
def test_an_empty_option_value_is_refused_not_defaulted(flag):
    with pytest.raises(ValueError, match=f"^--qdm-{flag} was given an empty value"):
        build_options({"model": "tiny", flag: ""})
    with pytest.raises(ValueError, match="^--qdm-min-survived was given an empty value"):
        build_options({"model": "tiny", "min-survived": ["int8:0.5", " "]})


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        (b"text\0\x01\x02 more", r"binary data \(a NUL byte at offset 4\)"),
        ("café au lait, déjà vu. ".encode("cp1252") * 50, r"not UTF-8 \(byte 0xe9 at offset 3"),
        ("naïve".encode()[:-3] + "ï".encode()[:1], "not UTF-8"),
    ],
)
def test_a_dataset_file_that_is_no_utf8_text_is_refused(tmp_path, content, pattern):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    message = refused({"dataset": str(path)}, f"^--qdm-dataset {path}: {pattern}")
    if "0xe9" in pattern:  # names the encoding it found and how to convert
        assert "it looks like cp125" in message and "iconv -f cp125" in message


def test_a_token_budget_the_corpus_cannot_fill_is_refused(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("short text " * 100)
    refused({"dataset": str(path), "tokens": 4096}, "^--qdm-tokens 4096 is more than the corpus")
    refused({"tokens": 10**12}, "^--qdm-tokens 1000000000000 is more than the corpus 'builtin'")
    preflight(build_options({"model": "tiny", "dataset": str(path), "tokens": 512}))


def test_a_truncated_config_is_named_with_the_json_error(model_copy):
    config = model_copy / "config.json"
    config.write_text(config.read_text()[:200])
    sae = model_copy / "sae_blocks.4.hook_resid_post"
    refused(
        {"model": str(model_copy), "sae": str(sae)},
        rf"^--qdm-model: {config} is not valid JSON \(.*line \d+ column \d+.*\); the file is trunc",
    )
    refused({"candidate": [str(model_copy)]}, f"^--qdm-candidate: {config} is not valid JSON")


@pytest.mark.parametrize(
    "key, what", [("vocab_size", "vocabulary"), ("num_hidden_layers", "layer count")]
)
def test_a_candidate_of_another_shape_is_refused_from_both_configs(model_copy, key, what):
    import json

    config = json.loads((model_copy / "config.json").read_text())
    config[key] += 1
    (model_copy / "config.json").write_text(json.dumps(config))
    refused(
        {"candidate": [str(model_copy)]},
        rf"^--qdm-candidate .* has {what} {config[key]} \({key}\) but the model has",
    )


def test_a_pickle_only_model_is_refused_with_how_to_convert(model_copy):
    for weights in model_copy.glob("*.safetensors"):
        weights.rename(weights.with_name("pytorch_model.bin"))
    message = refused(
        {"model": str(model_copy), "sae": str(model_copy / "sae_blocks.4.hook_resid_post")},
        "holds only pickled weights .*pytorch_model.bin",
    )
    assert "safetensors only" in message and "save_pretrained" in message
