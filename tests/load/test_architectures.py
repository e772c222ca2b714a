"""More Hugging Face decoder architectures (issue 13): Qwen2, Qwen3, Gemma-3 and Mixtral.

Each is a tiny config-built model (2 layers, hidden 64, grouped-query attention) saved with
save_pretrained and read back through load_model_from_disk, converted by TransformerLens' own
weight converter. Checked against transformers: logits, RTN (per row of every HF linear, per
expert for Mixtral, never the router), and the read-out hook the SAE reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qdm.compress.conditions import RTN
from pytest_qdm.compress.swap import applied
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load.architectures import SUPPORTED_ARCHITECTURES
from pytest_qdm.load.models import load_model_from_disk
from tests.helpers.factories import (
    heads_in,
    heads_out,
    rtn_numpy,
    sample_tokens,
    save_checkpoint,
)

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    head_dim=16,
    intermediate_size=96,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)

CONFIGS = {
    "Qwen2ForCausalLM": ("Qwen2Config", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", {}),
    "Gemma3ForCausalLM": (
        "Gemma3TextConfig",
        dict(
            sliding_window=8,  # shorter than the test sequences: local attention is exercised
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                # linear scaling on the global layers, as Gemma-3 4B and up
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
            final_logit_softcapping=20.0,  # off in the released models; exercised here
            tie_word_embeddings=True,  # as the released Gemma-3 text models
        ),
    ),
    "MixtralForCausalLM": (
        "MixtralConfig",
        dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    ),
}


def build(architecture, folder):
    config_class, overrides = CONFIGS[architecture]
    model = save_checkpoint(architecture, config_class, {**COMMON, **overrides}, folder)
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def loaded(request, tmp_path_factory):
    architecture = request.param
    folder = tmp_path_factory.mktemp(architecture)
    hf_model = build(architecture, folder)
    return architecture, folder, hf_model, load_model_from_disk(folder, device="cpu")


def expert_weights(mlp):
    """Per expert (gate [d_mlp, d_model], up [d_mlp, d_model], down [d_model, d_mlp]): the HF
    expert slices in nn.Linear layout, from transformers 5's fused 3-D parameters or from
    per-expert Linears (transformers < 5)."""
    experts = mlp.experts
    if hasattr(experts, "gate_up_proj"):  # [E, 2 * d_mlp, d_model], gate above up
        d_mlp = experts.gate_up_proj.shape[1] // 2
        return [
            (gate_up[:d_mlp], gate_up[d_mlp:], down)
            for gate_up, down in zip(experts.gate_up_proj, experts.down_proj, strict=True)
        ]
    return [(e.w1.weight, e.w3.weight, e.w2.weight) for e in experts]


def expected_rtn(hf_model, bits):
    """Per-row RTN of the HF linear (and expert) weights, laid out as TransformerLens
    parameters; the Mixtral router is absent (kept in full precision)."""
    cfg, expected = hf_model.config, {}
    for i, layer in enumerate(hf_model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        expected[f"blocks.{i}.attn.W_Q"] = heads_in(rtn_numpy(attn.q_proj.weight, bits), n)
        expected[f"blocks.{i}.attn._W_K"] = heads_in(rtn_numpy(attn.k_proj.weight, bits), kv)
        expected[f"blocks.{i}.attn._W_V"] = heads_in(rtn_numpy(attn.v_proj.weight, bits), kv)
        expected[f"blocks.{i}.attn.W_O"] = heads_out(rtn_numpy(attn.o_proj.weight, bits), n)
        if hasattr(mlp, "experts"):
            for e, (gate, up, down) in enumerate(expert_weights(mlp)):
                prefix = f"blocks.{i}.mlp.experts.{e}"
                expected[f"{prefix}.W_gate.weight"] = rtn_numpy(gate, bits)
                expected[f"{prefix}.W_in.weight"] = rtn_numpy(up, bits)
                expected[f"{prefix}.W_out.weight"] = rtn_numpy(down, bits)
        else:
            expected[f"blocks.{i}.mlp.W_gate"] = rtn_numpy(mlp.gate_proj.weight, bits).T
            expected[f"blocks.{i}.mlp.W_in"] = rtn_numpy(mlp.up_proj.weight, bits).T
            expected[f"blocks.{i}.mlp.W_out"] = rtn_numpy(mlp.down_proj.weight, bits).T
    return expected


def round_hf(hf_model, bits):
    """The HF model with every block linear (and expert) weight per-row RTN'd: not the
    embeddings, norms, biases, unembedding or the MoE router."""
    with torch.no_grad():
        for layer in hf_model.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear) and module is not getattr(
                    layer.mlp, "gate", None
                ):
                    module.weight.copy_(torch.from_numpy(rtn_numpy(module.weight, bits)))
            experts = getattr(layer.mlp, "experts", None)
            if experts is not None and hasattr(experts, "gate_up_proj"):
                for param in (experts.gate_up_proj, experts.down_proj):
                    for e in range(param.shape[0]):
                        param[e].copy_(torch.from_numpy(rtn_numpy(param[e], bits)))
    return hf_model.eval()


def test_supported(loaded):
    architecture, _, _, model = loaded
    assert architecture in SUPPORTED_ARCHITECTURES
    assert model.cfg.original_architecture == architecture
    assert model.cfg.n_key_value_heads == 2 and model.cfg.gated_mlp


def test_logits_match_transformers(loaded):
    architecture, _, hf_model, model = loaded
    tokens = sample_tokens()
    with torch.no_grad():
        ours, theirs = model(tokens), hf_model(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-4, architecture


def test_rtn_is_per_row_of_each_hf_linear_and_expert(loaded):
    architecture, _, hf_model, model = loaded
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    for bits in (2, 4, 8):
        compressed = RTN(bits).compressed_weights(model)
        expected = expected_rtn(hf_model, bits)
        assert set(compressed) == set(expected) == set(target_weights(model))
        for name, want in expected.items():
            np.testing.assert_allclose(
                compressed[name].numpy(), want, rtol=0, atol=1e-7, err_msg=name
            )
        with applied(model, compressed):  # everything else untouched, the router included
            for name, tensor in model.state_dict().items():
                if name not in compressed:
                    assert torch.equal(tensor, before[name]), name
    if architecture == "MixtralForCausalLM":
        assert "blocks.0.mlp.W_gate.weight" in before
        assert "blocks.0.mlp.W_gate.weight" not in compressed
        assert len(compressed) == 2 * (4 + 3 * 4)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_rtn_forward_matches_hf_model_with_rounded_linears(loaded):
    architecture, folder, hf_model, model = loaded
    rounded = round_hf(type(hf_model).from_pretrained(folder, attn_implementation="eager"), 4)
    tokens = sample_tokens(seed=1)
    with torch.no_grad():
        with applied(model, RTN(4).compressed_weights(model)):
            ours = model(tokens)
        theirs = rounded(tokens).logits
        assert (ours - theirs).abs().max() < 1e-4, architecture
        assert (theirs - hf_model(tokens).logits).abs().max() > 1e-2  # rounding did something


def test_read_out_hook_is_hf_hidden_state(loaded):
    """blocks.k.hook_resid_post is the output of HF decoder layer k: hidden_states[k + 1],
    except the last, which transformers returns after the final norm."""
    architecture, _, hf_model, model = loaded
    tokens = sample_tokens(seed=2)
    outputs = {}
    handle = hf_model.model.layers[1].register_forward_hook(
        lambda module, args, output: outputs.update(layer1=output)
    )
    try:
        with torch.no_grad():
            hidden = hf_model(tokens, output_hidden_states=True).hidden_states
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_post" in n)
    finally:
        handle.remove()
    layer1 = outputs["layer1"][0] if isinstance(outputs["layer1"], tuple) else outputs["layer1"]
    ours = cache["blocks.1.hook_resid_post"]
    assert (cache["blocks.0.hook_resid_post"] - hidden[1]).abs().max() < 1e-4, architecture
    assert (ours - layer1).abs().max() < 1e-4, architecture
    with torch.no_grad():
        assert (model.ln_final(ours) - hidden[2]).abs().max() < 1e-4, architecture


def test_refusals(tmp_path):
    windowed = {**COMMON, "use_sliding_window": True, "sliding_window": 8}
    save_checkpoint("Qwen2ForCausalLM", "Qwen2Config", windowed, tmp_path / "windowed")
    with pytest.raises(ValueError, match="Qwen2 checkpoints with sliding-window attention"):
        load_model_from_disk(tmp_path / "windowed", device="cpu")

    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
    yarn["original_max_position_embeddings"] = 16
    settings = {**COMMON, "rope_parameters": yarn}
    save_checkpoint("Qwen3ForCausalLM", "Qwen3Config", settings, tmp_path / "yarn")
    with pytest.raises(ValueError, match="Qwen3 checkpoints with 'yarn' RoPE scaling"):
        load_model_from_disk(tmp_path / "yarn", device="cpu")


def test_llama3_rope_scaling_is_mapped_and_other_scalings_refused(tmp_path):
    """Llama 3.1+ checkpoints use "llama3" (NTK-by-parts) RoPE scaling: loading it as plain
    RoPE would give wrong activations silently, so it is mapped, and others are refused."""
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope["original_max_position_embeddings"] = 8  # short: the scaling acts on test sequences
    settings = {**COMMON, "rope_parameters": rope}
    hf_model = save_checkpoint("LlamaForCausalLM", "LlamaConfig", settings, tmp_path / "llama3")
    model = load_model_from_disk(tmp_path / "llama3", device="cpu")
    assert model.cfg.use_NTK_by_parts_rope and model.cfg.NTK_by_parts_factor == 8.0
    tokens = sample_tokens()
    with torch.no_grad():
        assert (model(tokens) - hf_model(tokens).logits).abs().max() < 1e-4

    settings["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    save_checkpoint("LlamaForCausalLM", "LlamaConfig", settings, tmp_path / "dynamic")
    with pytest.raises(ValueError, match="Llama-family checkpoints with 'dynamic' RoPE scaling"):
        load_model_from_disk(tmp_path / "dynamic", device="cpu")
