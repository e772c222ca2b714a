"""Multimodal checkpoints (Gemma-3 4B-27B ship as Gemma3ForConditionalGeneration) audited
through their text decoder (pytest_qdm/load/multimodal.py), on a tiny config-built model
with a vision tower."""

from __future__ import annotations

import subprocess

import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.schemes import NF4
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load.models import load_checkpoint, load_model_from_disk
from pytest_qdm.load.placement import Placement
from tests.helpers.factories import GEMMA3_TEXT, save_gemma3_multimodal


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multimodal") / "tiny-gemma3-mm"
    save_gemma3_multimodal(folder)
    return folder


@pytest.fixture(autouse=True)
def no_installs(monkeypatch):
    """TransformerLens' multimodal TransformerBridge pip-installs torchvision when it
    cannot load an image processor (it replaced this machine's torch once): loading here
    must never run pip. Attempts are recorded and blocked, not raised, because
    TransformerLens swallows the install's exceptions; other commands run as usual."""
    installs = []

    def guarded(real):
        def call(args, *rest, **kwargs):
            if "pip" in [str(a) for a in (args if isinstance(args, list | tuple) else [args])]:
                installs.append(args)
                raise OSError("pip is blocked in this test")
            return real(args, *rest, **kwargs)

        return call

    monkeypatch.setattr(subprocess, "check_call", guarded(subprocess.check_call))
    monkeypatch.setattr(subprocess, "run", guarded(subprocess.run))
    yield
    assert installs == [], f"pip was run: {installs}"


def text_logits(folder, tokens):
    """The multimodal model's own logits on text alone, as transformers computes them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    ).eval()
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    with torch.inference_mode():
        return model(tokens).logits


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_the_text_decoder_is_the_model_on_text(multimodal, backend):
    tokens = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(0))
    model = load_model_from_disk(multimodal, device="cpu", backend=backend)
    with torch.inference_mode():
        ours = model(tokens)
    expected = text_logits(multimodal, tokens)
    if backend == "hooked":  # TransformerLens' Gemma-3 conversion: float32 rounding
        assert model.cfg.original_architecture == "Gemma3ForCausalLM"
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
    else:  # the decoder's own modules, shared: the same numbers
        assert type(model.original_model).__name__ == "Gemma3ForCausalLM"
        assert torch.equal(ours, expected)
    assert not [n for n, _ in model.named_parameters() if "vision" in n or "multi_modal" in n]
    assert len(target_weights(model)) == 7 * GEMMA3_TEXT["num_hidden_layers"]


def test_a_bnb_nf4_multimodal_candidate_is_the_simulated_nf4(multimodal, tmp_path):
    pytest.importorskip("bitsandbytes", reason="the [bnb] extra is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        multimodal, quantization_config=config, dtype=torch.float32, device_map="cpu"
    )
    folder = tmp_path / "tiny-gemma3-mm-nf4"
    quantized.save_pretrained(folder)
    AutoTokenizer.from_pretrained(multimodal).save_pretrained(folder)

    reference = load_model_from_disk(multimodal, device="cpu")
    candidate = qdm.Candidate.from_pretrained(str(folder), device="cpu")
    assert candidate.checkpoint.quant_method == "bitsandbytes"
    shipped = dict(candidate.model.named_parameters())
    for name, weight in NF4(64).compressed_weights(reference).items():
        assert torch.equal(shipped[name].data, weight), name

    with pytest.raises(ValueError, match="multimodal Gemma3ForConditionalGeneration.*forward"):
        load_checkpoint(folder, Placement(device="cpu"), path="forward")
    with pytest.raises(ValueError, match="device_map / max_memory are not supported for it"):
        load_model_from_disk(multimodal, device_map={"": "cpu"})


def test_a_compressed_tensors_multimodal_checkpoint_that_transformers_cannot_load_is_one_line(
    multimodal, tmp_path
):
    """llm-compressor's usual recipe (vision tower left unquantized) writes a checkpoint that
    transformers 5.17 fails to build; the candidate loader says so in one line. If this
    starts loading, transformers has fixed it: drop multimodal.explained_load_failure."""
    pytest.importorskip("llmcompressor", reason="the [llmcompressor] extra is not installed")
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}
    groups = {"int4": {"targets": ["Linear"], "weights": {**weights, "group_size": 32}}}
    ignore = ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"]
    model = AutoModelForCausalLM.from_pretrained(multimodal, dtype=torch.float32)
    oneshot(model=model, recipe=QuantizationModifier(config_groups=groups, ignore=ignore))
    folder = tmp_path / "tiny-gemma3-mm-w4g32"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(multimodal).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"could not load this compressed-tensors Gemma3For"):
        qdm.Candidate.from_pretrained(str(folder), device="cpu")
