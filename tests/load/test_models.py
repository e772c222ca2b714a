"""Presets, local-folder and Hub loading, candidates, offline behaviour (issue 6).

Tiny GPT-NeoX and Gemma-2 checkpoints are built with transformers from a config, saved with
save_pretrained, and read back through load_model_from_disk. Nothing touches the network.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pytest_qdm
from pytest_qdm.compress.conditions import RTN, Candidate
from pytest_qdm.compress.swap import applied
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load import presets as presets
from pytest_qdm.load.architectures import SUPPORTED_ARCHITECTURES
from pytest_qdm.load.hub import HubUnavailableError, hub_reachable
from pytest_qdm.load.models import load_model, load_model_from_disk
from pytest_qdm.load.presets import Preset, get_preset, preset_names, register_preset
from pytest_qdm.load.saes import load_sae, split_sae_spec
from pytest_qdm.load.subject import load_preset
from tests.helpers.factories import (
    heads_in,
    heads_out,
    round_linears,
    rtn_numpy,
    sample_tokens,
    save_gemma2,
    save_llama_family,
    save_neox,
)

TEXT = "Hello world, the quick brown fox"
TEXT_IDS = [12092, 1533, 13, 253, 3158, 8516, 30013]  # GPT-NeoX-20B tokenizer
ZOO_WEIGHTS = Path(pytest_qdm.__file__).parent / "zoo" / "weights"


# ------------------------------------------------------------------ tiny HF checkpoints


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = save_llama_family(folder, "LlamaForCausalLM")
    return folder, model, load_model_from_disk(folder, device="cpu")


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral")
    model = save_llama_family(folder, "MistralForCausalLM")
    return folder, model, load_model_from_disk(folder, device="cpu")


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("neox")
    return folder, save_neox(folder), load_model_from_disk(folder, device="cpu")


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma2")
    return folder, save_gemma2(folder), load_model_from_disk(folder, device="cpu")


@pytest.fixture(params=["neox", "gemma2", "llama", "mistral"])
def checkpoint(request):
    return request.param, *request.getfixturevalue(request.param)


# ---------------------------------------------------------------- RTN, independently


def expected_rtn(arch, hf_model, bits):
    """Per-row RTN of the HF nn.Linear weights, laid out as TransformerLens parameters."""
    expected = {}
    cfg = hf_model.config
    if arch == "neox":
        for i, layer in enumerate(hf_model.gpt_neox.layers):
            n = cfg.num_attention_heads
            # GPT-NeoX fuses QKV as [heads, 3, d_head] rows; per-row RTN before or after
            # the split is the same, since every row belongs to one of Q, K, V.
            qkv = rtn_numpy(layer.attention.query_key_value.weight, bits)
            qkv = qkv.reshape(n, 3, -1, qkv.shape[1])
            for j, kind in enumerate("QKV"):
                expected[f"blocks.{i}.attn.W_{kind}"] = qkv[:, j].transpose(0, 2, 1)
            expected[f"blocks.{i}.attn.W_O"] = heads_out(
                rtn_numpy(layer.attention.dense.weight, bits), n
            )
            expected[f"blocks.{i}.mlp.W_in"] = rtn_numpy(layer.mlp.dense_h_to_4h.weight, bits).T
            expected[f"blocks.{i}.mlp.W_out"] = rtn_numpy(layer.mlp.dense_4h_to_h.weight, bits).T
    else:
        for i, layer in enumerate(hf_model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
            expected[f"blocks.{i}.attn.W_Q"] = heads_in(rtn_numpy(attn.q_proj.weight, bits), n)
            expected[f"blocks.{i}.attn._W_K"] = heads_in(rtn_numpy(attn.k_proj.weight, bits), kv)
            expected[f"blocks.{i}.attn._W_V"] = heads_in(rtn_numpy(attn.v_proj.weight, bits), kv)
            expected[f"blocks.{i}.attn.W_O"] = heads_out(rtn_numpy(attn.o_proj.weight, bits), n)
            expected[f"blocks.{i}.mlp.W_gate"] = rtn_numpy(mlp.gate_proj.weight, bits).T
            expected[f"blocks.{i}.mlp.W_in"] = rtn_numpy(mlp.up_proj.weight, bits).T
            expected[f"blocks.{i}.mlp.W_out"] = rtn_numpy(mlp.down_proj.weight, bits).T
    return expected


# ------------------------------------------------------------------------ local folders


def test_local_checkpoint_logits_match_transformers(checkpoint):
    arch, folder, hf_model, model = checkpoint
    tokens = sample_tokens()
    with torch.no_grad():
        ours, theirs = model(tokens), hf_model(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-4
    assert model.cfg.original_architecture in SUPPORTED_ARCHITECTURES
    if arch != "neox":
        assert model.cfg.n_key_value_heads == 2 and model.cfg.gated_mlp
    # unprocessed: the norm weights are the checkpoint's (Gemma stores w, applies 1 + w)
    norm = model.blocks[0].ln1.w
    if arch == "neox":
        assert torch.equal(norm, hf_model.gpt_neox.layers[0].input_layernorm.weight)
    elif arch == "gemma2":
        assert torch.equal(norm, hf_model.model.layers[0].input_layernorm.weight + 1)
    else:
        assert torch.equal(norm, hf_model.model.layers[0].input_layernorm.weight)


def test_rtn_equals_per_row_rtn_of_hf_linear_weights(checkpoint):
    arch, _, hf_model, model = checkpoint
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    for bits in range(2, 9):
        compressed = RTN(bits).compressed_weights(model)
        expected = expected_rtn(arch, hf_model, bits)
        assert set(compressed) == set(expected) == set(target_weights(model))
        for name, want in expected.items():
            np.testing.assert_allclose(
                compressed[name].numpy(), want, rtol=0, atol=1e-7, err_msg=name
            )
        with applied(model, compressed):  # embeddings, norms, biases, unembedding untouched
            for name, tensor in model.state_dict().items():
                if name not in compressed:
                    assert torch.equal(tensor, before[name]), name
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_rtn_forward_matches_hf_model_with_rounded_linears(checkpoint):
    """End to end: RTN-INT4 in TransformerLens == the HF model with per-row-rounded nn.Linear."""
    arch, folder, _, model = checkpoint
    hf_model = round_linears(
        type(checkpoint[2]).from_pretrained(folder, attn_implementation="eager"), bits=4
    )
    with torch.no_grad():
        tokens = sample_tokens(seed=1)
        with applied(model, RTN(4).compressed_weights(model)):
            ours = model(tokens)
        assert (ours - hf_model(tokens).logits).abs().max() < 1e-4


def test_real_gpt_neox_tokenizer_with_pythia_shaped_model(shared_data, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = shared_data / "tokenizers" / "gpt-neox-20b-tokenizer.json"
    if not tokenizer_file.is_file():
        pytest.skip(f"{tokenizer_file} is absent")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    hf_model = save_neox(
        tmp_path,
        vocab_size=50304,
        tokenizer=tokenizer,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
    )
    model = load_model(str(tmp_path), device="cpu")
    tokens = model.to_tokens(TEXT, prepend_bos=False)
    assert tokens.tolist() == [TEXT_IDS]
    assert model.to_string(tokens[0]) == TEXT
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (1, len(TEXT_IDS), 50304)
        assert (logits - hf_model(tokens).logits).abs().max() < 1e-4


def test_candidate_from_local_folder(neox, tmp_path):
    folder, hf_model, reference = neox
    # a user's RTN-INT4 checkpoint, written by transformers: the candidate must equal RTN(4)
    int4 = round_linears(type(hf_model).from_pretrained(folder), bits=4)
    int4.save_pretrained(tmp_path / "int4")
    candidate = Candidate.from_pretrained(str(tmp_path / "int4"), device="cpu")
    assert candidate.name == "candidate:int4"  # named after the folder
    candidate.check_compatible(reference)
    weights = candidate.compressed_weights(reference)
    for name, tensor in RTN(4).compressed_weights(reference).items():
        assert torch.allclose(weights[name], tensor, atol=1e-7, rtol=0), name
    assert torch.equal(weights["embed.W_E"], reference.embed.W_E)

    save_neox(tmp_path / "wider", intermediate_size=128)
    other = Candidate.from_pretrained(str(tmp_path / "wider"), name="wider", device="cpu")
    with pytest.raises(ValueError, match="does not match the reference architecture.*W_in"):
        other.check_compatible(reference)


def test_missing_and_unsupported_folders(tmp_path):
    from transformers import GPT2Config

    missing = tmp_path / "no-such-model"
    for spec in (missing, str(missing), "./no-such-model"):
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            load_model(spec, device="cpu")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_from_disk(tmp_path, device="cpu")
    unsupported = tmp_path / "made-up"  # GPT-2 itself now loads through the TransformerBridge
    GPT2Config(n_embd=32, n_layer=1, n_head=2, architectures=["MadeUpLMHeadModel"]).save_pretrained(
        unsupported
    )
    with pytest.raises(
        ValueError,
        match="MadeUpLMHeadModel.*supported: GPTNeoXForCausalLM, Gemma2ForCausalLM, "
        "Gemma3ForCausalLM, LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, "
        r"Qwen2ForCausalLM, Qwen3ForCausalLM \(HookedTransformer or TransformerBridge\), and "
        "through TransformerLens' TransformerBridge: .*GPT2LMHeadModel.*Phi3ForCausalLM",
    ):
        load_model(str(unsupported), device="cpu")
    with pytest.raises(FileNotFoundError, match="no-such-sae"):
        load_sae(str(tmp_path / "no-such-sae"))
    with pytest.raises(FileNotFoundError, match="not an sae_lens SAE folder"):
        load_sae(str(unsupported))  # a model folder, not an SAE


def test_sae_from_disk_round_trip(neox_model, neox_sae, tmp_path):
    neox_sae.save_model(tmp_path / "sae")
    loaded = load_sae(str(tmp_path / "sae"), device="cpu")
    assert loaded.cfg.metadata.hook_name == neox_sae.cfg.metadata.hook_name
    for name, tensor in neox_sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_split_sae_spec():
    assert split_sae_spec("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical") == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_16k/canonical",
    )
    assert split_sae_spec("pythia-70m-deduped-res-sm/blocks.4.hook_resid_post") == (
        "pythia-70m-deduped-res-sm",
        "blocks.4.hook_resid_post",
    )
    with pytest.raises(ValueError, match="tuple"):
        split_sae_spec("no-such-release/some/id")


# ------------------------------------------------------------------------------ presets


def test_builtin_presets_are_pinned():
    pythia = get_preset("pythia-70m-deduped")
    assert (pythia.model, pythia.sae_release, pythia.sae_id, pythia.hook_name) == (
        "EleutherAI/pythia-70m-deduped",
        "pythia-70m-deduped-res-sm",
        "blocks.4.hook_resid_post",
        "blocks.4.hook_resid_post",
    )
    assert (pythia.second_sae_id, pythia.second_hook_name) == ("blocks.2.hook_resid_post",) * 2
    assert (pythia.token_budget, pythia.context_length, pythia.prepend_bos) == (200_000, 512, False)
    assert pythia.dataset == "wikitext:wikitext-2-raw-v1:test"
    assert (pythia.dtype_for("cpu"), pythia.dtype_for("cuda:0")) == ("float32", "float32")

    gemma = get_preset("gemma-2-2b")
    assert (gemma.model, gemma.sae_release, gemma.sae_id, gemma.hook_name) == (
        "google/gemma-2-2b",
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_16k/canonical",
        "blocks.12.hook_resid_post",
    )
    assert (gemma.second_sae_id, gemma.second_hook_name) == (
        "layer_6/width_16k/canonical",
        "blocks.6.hook_resid_post",
    )
    assert (gemma.token_budget, gemma.context_length, gemma.prepend_bos) == (500_000, 256, True)
    assert gemma.dataset == pythia.dataset
    assert (gemma.dtype_for("cpu"), gemma.dtype_for("cuda")) == ("float32", "bfloat16")
    assert "https://" in gemma.source and "https://" in pythia.source

    gemma3 = get_preset("gemma-3-4b")
    assert (gemma3.model, gemma3.sae_release, gemma3.sae_id, gemma3.hook_name) == (
        "google/gemma-3-4b-pt",
        "gemma-scope-2-4b-pt-res",
        "layer_17_width_16k_l0_medium",
        "blocks.17.hook_resid_post",
    )
    assert (gemma3.second_sae_id, gemma3.second_hook_name) == (
        "layer_9_width_16k_l0_medium",
        "blocks.9.hook_resid_post",
    )
    assert (gemma3.token_budget, gemma3.context_length, gemma3.prepend_bos) == (500_000, 1024, True)
    assert (gemma3.dtype_for("cpu"), gemma3.dtype_for("cuda")) == ("float32", "bfloat16")

    # the releases and ids exist in sae_lens' directory, for the model the preset loads
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    for preset in (pythia, gemma, gemma3):
        release = directory[preset.sae_release]
        assert release.model.split("/")[-1] == preset.model.split("/")[-1]
        ids = directory[preset.sae_release].saes_map
        assert preset.sae_id in ids and preset.second_sae_id in ids


def test_registry(monkeypatch):
    monkeypatch.setattr(presets, "_registry", dict(presets._registry))
    assert {"pythia-70m-deduped", "gemma-2-2b", "tiny"} <= set(preset_names())
    with pytest.raises(ValueError, match="unknown preset 'nope'.*pythia-70m-deduped.*gemma-2-2b"):
        get_preset("nope")
    mine = Preset(
        name="mine",
        model="/models/mine",
        sae_release="r",
        sae_id="s",
        hook_name="blocks.0.hook_resid_post",
    )
    assert register_preset(mine) is mine and get_preset("mine") is mine
    with pytest.raises(ValueError, match="already registered"):
        register_preset(mine)
    replaced = Preset(**{**mine.__dict__, "token_budget": 10})
    register_preset(replaced, overwrite=True)
    assert get_preset("mine").token_budget == 10
    with pytest.raises(ValueError, match="token_budget"):
        Preset(**{**mine.__dict__, "token_budget": 0})
    with pytest.raises(ValueError, match="second_sae_id"):
        Preset(**{**mine.__dict__, "second_sae_id": "x"})


def test_entry_point_presets(monkeypatch):
    import importlib.metadata

    first = Preset(name="ep-one", model="m", sae_release="r", sae_id="a", hook_name="h")
    second = Preset(name="ep-two", model="m", sae_release="r", sae_id="b", hook_name="h")

    class EntryPoint:
        name, value = "demo", "demo_pkg:PRESETS"

        def load(self):
            return [first, second]

    def entry_points(group):
        return [EntryPoint()] if group == "pytest_qdm.presets" else []

    monkeypatch.setattr(presets, "_registry", dict(presets._registry))
    monkeypatch.setattr(presets, "_entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert get_preset("ep-two") is second
    assert {"ep-one", "ep-two"} <= set(preset_names())


def test_presets_import_is_light():
    code = (
        "import sys, pytest_qdm.load.presets as p; p.get_preset('gemma-2-2b'); p.preset_names(); "
        "print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tiny_preset_resolves_from_the_zoo_constants():
    from pytest_qdm import zoo

    tiny = get_preset("tiny")
    assert (tiny.model, tiny.sae_release, tiny.dataset) == ("tiny", "builtin", "builtin")
    assert (tiny.hook_name, tiny.second_hook_name) == (zoo.TINY_HOOK, zoo.TINY_SECOND_HOOK)
    assert tiny.context_length == zoo.TINY_CONTEXT_LENGTH and tiny.prepend_bos


@pytest.mark.skipif(
    not ZOO_WEIGHTS.is_dir() or not any(ZOO_WEIGHTS.iterdir()),
    reason="the bundled tiny model (pytest_qdm/zoo/weights) is not built yet",
)
def test_tiny_preset_loads():
    from pytest_qdm import zoo

    loaded = load_preset("tiny", device="cpu")
    assert set(loaded.saes) == {zoo.TINY_HOOK, zoo.TINY_SECOND_HOOK}
    assert loaded.sae is loaded.saes[zoo.TINY_HOOK]
    tokens = loaded.tokens(2 * zoo.TINY_CONTEXT_LENGTH, seed=0).tokens
    assert tokens.shape == (2, zoo.TINY_CONTEXT_LENGTH)
    assert (tokens[:, 0] == loaded.model.tokenizer.bos_token_id).all()


def test_loaded_preset_tokens_use_the_preset_settings(neox, tmp_path):
    from pytest_qdm.load.subject import LoadedPreset

    folder, _, model = neox
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    preset = Preset(
        name="local",
        model=str(folder),
        sae_release="local",
        sae_id="sae",
        hook_name="blocks.1.hook_resid_post",
        token_budget=64,
        context_length=16,
        prepend_bos=True,
        dataset=str(corpus),
    )
    token_set = LoadedPreset(preset=preset, model=model, sae=None).tokens(seed=0)
    assert token_set.tokens.shape == (4, 16)
    assert (token_set.tokens[:, 0] == model.tokenizer.bos_token_id).all()
    assert LoadedPreset(preset=preset, model=model, sae=None).tokens(32).tokens.shape == (2, 16)


# ---------------------------------------------------------------------------- offline


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """Offline, with an empty Hub cache, so a machine's cached downloads cannot hide a miss."""
    import huggingface_hub.constants
    import sae_lens  # noqa: F401 (imported here so the timed calls below measure loading only)
    import transformer_lens  # noqa: F401

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return huggingface_hub.constants


def test_hub_preset_offline_fails_fast_and_clearly(empty_hub_cache):
    offline_before = empty_hub_cache.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_preset("pythia-70m-deduped", device="cpu")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "model 'EleutherAI/pythia-70m-deduped'" in message
    assert (
        "HF_HUB_OFFLINE" in message and "local folder" in message and "load_model('DIR')" in message
    )
    assert info.value.__cause__ is not None
    assert offline_before == empty_hub_cache.HF_HUB_OFFLINE  # offline mode restored

    start = time.monotonic()
    with pytest.raises(
        HubUnavailableError,
        match=r"SAE gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical.*load_sae\('DIR'\)",
    ):
        load_sae(("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical"), device="cpu")
    assert time.monotonic() - start < 5


def test_unreachable_hub_switches_to_offline(empty_hub_cache, monkeypatch):
    from pytest_qdm.load import hub as loading

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(loading, "_reachability", {})
    start = time.monotonic()
    assert not hub_reachable(timeout=1.0)
    with pytest.raises(HubUnavailableError, match="127.0.0.1:9 is not reachable"):
        load_sae(("pythia-70m-deduped-res-sm", "blocks.4.hook_resid_post"), device="cpu")
    with pytest.raises(HubUnavailableError, match="offline=True was given"):
        load_model("someone/some-model", device="cpu", offline=True)
    assert time.monotonic() - start < 5


def test_read_out_hooks_land_where_hf_hidden_states_are(checkpoint):
    """blocks.k.hook_resid_post is Hugging Face's hidden_states[k + 1] (before the final
    norm), so an SAE trained on either reads the same activations."""
    arch, _, hf_model, model = checkpoint
    tokens = sample_tokens(seed=2)
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_post" in n)
    for k in range(model.cfg.n_layers - 1):  # the last hidden state is after the final norm
        ours = cache[f"blocks.{k}.hook_resid_post"]
        assert (ours - hidden[k + 1]).abs().max() < 1e-4, (arch, k)
