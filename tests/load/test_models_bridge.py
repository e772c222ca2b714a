"""The TransformerBridge backend: a reference model that is the transformers model itself,
wrapped in TransformerLens' TransformerBridge (same hook names, no weight processing).

Tiny config-built checkpoints saved to tmp folders. A Llama loaded by both backends gives the
same read-out activations, the same RTN numbers (per-row RTN of the HF weights) and the same
per-feature r; architectures outside SUPPORTED_ARCHITECTURES (GPT-2's Conv1D, Phi-3's fused
qkv/gate_up projections, Qwen2-MoE's fused expert stacks, shared expert and routers) are
audited end to end through the bridge; device_map / max_memory reach from_pretrained.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.conditions import RTN, MagnitudePrune
from pytest_qdm.compress.mixed import BlockRTN, MixedRTN
from pytest_qdm.compress.schemes import scheme_condition
from pytest_qdm.compress.swap import applied
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load.architectures import SUPPORTED_ARCHITECTURES
from pytest_qdm.load.backends import bridge_architectures
from pytest_qdm.load.models import load_model, load_model_from_disk
from pytest_qdm.stream.hooks import run_to_hook
from tests.helpers.factories import (
    char_tokenizer,
    fitted_sae,
    round_linears,
    rtn_numpy,
    sample_tokens,
    save_checkpoint,
)

HOOK = "blocks.1.hook_resid_post"

COMMON = dict(vocab_size=128, tie_word_embeddings=False)

CONFIGS = {
    "LlamaForCausalLM": (
        "LlamaConfig",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=96,
            max_position_embeddings=64,
        ),
    ),
    "GPT2LMHeadModel": (  # Conv1D weights, [in, out]
        "GPT2Config",
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=64),
    ),
    "Phi3ForCausalLM": (  # fused qkv_proj and gate_up_proj nn.Linear
        "Phi3Config",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=64,
            pad_token_id=0,
        ),
    ),
    "Qwen2MoeForCausalLM": (  # fused expert stacks [experts, out, in], shared expert, router
        "Qwen2MoeConfig",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            max_position_embeddings=64,
        ),
    ),
}
LLAMA_DIMS = CONFIGS["LlamaForCausalLM"][1]
CONFIGS |= {  # the HookedTransformer architectures, here through the bridge
    "MistralForCausalLM": ("MistralConfig", dict(LLAMA_DIMS, sliding_window=None)),
    "Qwen2ForCausalLM": ("Qwen2Config", LLAMA_DIMS),
    "Qwen3ForCausalLM": ("Qwen3Config", LLAMA_DIMS),
    "MixtralForCausalLM": (
        "MixtralConfig",
        dict(LLAMA_DIMS, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    ),
    "GPTNeoXForCausalLM": (
        "GPTNeoXConfig",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
        ),
    ),
    "Gemma2ForCausalLM": (
        "Gemma2Config",
        dict(LLAMA_DIMS, sliding_window=8, query_pre_attn_scalar=16),
    ),
    "Gemma3ForCausalLM": (
        "Gemma3TextConfig",
        dict(
            LLAMA_DIMS,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=16,
            tie_word_embeddings=True,
        ),
    ),
}
BRIDGE_ONLY = [a for a in CONFIGS if a not in SUPPORTED_ARCHITECTURES]


def build(architecture, folder):
    config_class, overrides = CONFIGS[architecture]
    save_checkpoint(architecture, config_class, {**COMMON, **overrides}, folder)
    return folder


def fresh_hf(folder):
    """The checkpoint as transformers runs it (eager attention, as the bridge runs it)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    ).eval()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_untouched(model, before):
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name].detach(), value), name


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build("LlamaForCausalLM", tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="module")
def both(llama):
    """The Llama checkpoint through each backend."""
    return (
        load_model_from_disk(llama, device="cpu"),
        load_model_from_disk(llama, device="cpu", backend="bridge"),
    )


# ------------------------------------------------------------------ (a) Llama, both backends


def test_backends_are_what_was_asked(both):
    hooked, bridge = both
    assert type(hooked).__name__ == "HookedTransformer"  # the default is unchanged
    assert type(bridge).__name__ == "TransformerBridge"
    assert HOOK in bridge.hook_dict


def test_read_out_activations_agree(both):
    hooked, bridge = both
    tokens = sample_tokens(seed=3, shape=(4, 24))
    with torch.inference_mode():
        a, _ = run_to_hook(hooked, tokens, HOOK)
        b, _ = run_to_hook(bridge, tokens, HOOK)
    print(f"bridge vs HookedTransformer at {HOOK}: max |diff| {(a - b).abs().max().item():.3g}")
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)


TL_TO_HF = {
    "W_Q": "q_proj",
    "W_K": "k_proj",
    "W_V": "v_proj",
    "W_O": "o_proj",
    "W_gate": "gate_proj",
    "W_in": "up_proj",
    "W_out": "down_proj",
}


def test_rtn_is_the_same_numbers_on_both_backends(both, llama):
    hooked, bridge = both
    hf = fresh_hf(llama)
    tl_weights = RTN(4).compressed_weights(hooked)
    br_weights = RTN(4).compressed_weights(bridge)
    assert len(tl_weights) == len(br_weights) == 14  # 7 linears x 2 blocks
    by_hf = {}
    for name, value in br_weights.items():
        layer = int(name.split(".")[2])
        proj = name.split("._original_component.")[-2]
        by_hf[(layer, proj)] = value
    tl_targets = target_weights(hooked)
    for name, value in tl_weights.items():
        layer, kind = int(name.split(".")[1]), name.rsplit(".", 1)[-1].lstrip("_")
        proj = TL_TO_HF[kind]
        ours = by_hf[(layer, proj)]
        torch.testing.assert_close(tl_targets[name].to_rows(value), ours, atol=0, rtol=0)
        module = hf.model.layers[layer]
        module = (
            module.self_attn
            if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
            else module.mlp
        )
        expected = rtn_numpy(getattr(module, proj).weight, 4)
        np.testing.assert_array_equal(ours.numpy(), expected)


def test_audit_r_agrees_across_backends(both):
    hooked, bridge = both
    sae = fitted_sae(hooked, HOOK)
    tokens = sample_tokens(seed=5, shape=(8, 24))
    conditions = [RTN(4), RTN(8), RTN(4, group_size=16)]
    a = qdm.audit(hooked, sae, tokens, conditions)
    b = qdm.audit(bridge, sae, tokens, conditions)
    for condition in conditions:
        ra = a.conditions[condition.name].correlation
        rb = b.conditions[condition.name].correlation
        np.testing.assert_array_equal(np.isnan(ra), np.isnan(rb))
        diff = np.nanmax(np.abs(ra - rb))
        print(f"{condition.name}: max |r_hooked - r_bridge| = {diff:.3g}")
        assert diff <= 1e-5


def test_a_candidate_checkpoint_on_a_bridge_reference(both, llama, tmp_path):
    """A user's RTN'd checkpoint, loaded with the reference's backend, swaps into the bridge
    by its parameter names and gives RTN(4)'s r; a backend mismatch is refused."""
    hooked, bridge = both
    folder = tmp_path / "rtn4"
    round_linears(fresh_hf(llama), 4).save_pretrained(folder)
    char_tokenizer(128).save_pretrained(folder)
    candidate = qdm.Candidate.from_pretrained(str(folder), backend="bridge", device="cpu")
    sae = fitted_sae(hooked, HOOK)
    tokens = sample_tokens(seed=5, shape=(8, 24))
    result = qdm.audit(bridge, sae, tokens, [RTN(4), candidate])
    ours = result.conditions[candidate.name].correlation
    np.testing.assert_allclose(ours, result.conditions["rtn-int4"].correlation, atol=1e-7)
    hooked_candidate = qdm.Candidate.from_pretrained(str(folder), device="cpu")
    with pytest.raises(ValueError, match="is a HookedTransformer but the reference is a"):
        hooked_candidate.check_compatible(bridge)


def test_two_phase_and_loss_on_a_bridge(both):
    """The two-phase pass (block by block, reference parked) and the loss (full forward)
    give the one-pass numbers on a bridge too."""
    _, bridge = both
    sae = fitted_sae(bridge, HOOK)
    tokens = sample_tokens(seed=6, shape=(8, 24))
    conditions = [RTN(4), MixedRTN({0: 8}, default_bits=4)]
    settings = dict(progress=False, batch_size=4, compute_loss=True)
    one = qdm.audit(bridge, sae, tokens, conditions, qdm.AuditConfig(**settings))
    two = qdm.audit(bridge, sae, tokens, conditions, qdm.AuditConfig(**settings, two_phase=True))
    for condition in conditions:
        a, b = one.conditions[condition.name], two.conditions[condition.name]
        np.testing.assert_allclose(a.correlation, b.correlation, atol=1e-6)
        assert a.mean_nll is not None and a.n_loss_tokens == b.n_loss_tokens
        assert b.mean_nll == pytest.approx(a.mean_nll, rel=1e-6)
        assert a.mean_nll != one.reference_mean_nll  # the loss ran on the compressed weights


# ------------------------------------------------ (b) architectures only the bridge supports


@pytest.fixture(scope="module", params=list(CONFIGS))
def bridged(request, tmp_path_factory):
    """Each architecture through the bridge: automatically where only the bridge supports
    it, with backend="bridge" for the HookedTransformer ones."""
    architecture = request.param
    folder = build(architecture, tmp_path_factory.mktemp(architecture) / "tiny")
    backend = None if architecture in BRIDGE_ONLY else "bridge"
    return architecture, folder, load_model(str(folder), device="cpu", backend=backend)


@pytest.mark.parametrize("architecture", [a for a in CONFIGS if a not in BRIDGE_ONLY])
def test_the_bridge_agrees_with_the_hooked_transformer(architecture, tmp_path):
    """For the HookedTransformer architectures: both backends read the same activations at
    the SAE's hook."""
    folder = build(architecture, tmp_path / "tiny")
    bridge = load_model(str(folder), device="cpu", backend="bridge")
    hooked = load_model_from_disk(folder, device="cpu")
    tokens = sample_tokens(seed=3, shape=(4, 24))
    with torch.inference_mode():
        a, _ = run_to_hook(hooked, tokens, HOOK)
        b, _ = run_to_hook(bridge, tokens, HOOK)
    print(f"{architecture} {HOOK}: max |hooked - bridge| {(a - b).abs().max().item():.3g}")
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-5)


def test_bridge_only_architectures_are_supported_here():
    assert set(BRIDGE_ONLY) <= set(bridge_architectures())
    assert set(SUPPORTED_ARCHITECTURES) <= set(bridge_architectures())


def test_logits_equal_transformers(bridged):
    architecture, folder, model = bridged
    assert type(model).__name__ == "TransformerBridge"  # taken automatically
    assert type(model.original_model).__name__ == architecture
    tokens = sample_tokens(seed=1)
    with torch.inference_mode():
        ours = model(tokens)
        hf_out = fresh_hf(folder)(tokens, output_hidden_states=True)
        read_out, _ = run_to_hook(model, tokens, "blocks.0.hook_resid_post")
    torch.testing.assert_close(ours, hf_out.logits, atol=1e-5, rtol=1e-5)
    # the read-out hook is the HF hidden state after block 0 (the last one is final-normed)
    torch.testing.assert_close(
        read_out, hf_out.hidden_states[1].reshape(read_out.shape), atol=1e-5, rtol=1e-5
    )


def hf_rows(architecture, hf):
    """Per block, the HF weights compression must round, as [out, in] rows, found without
    the bridge: every nn.Linear / Conv1D weight and fused expert stack (each expert's rows
    in turn) of a decoder layer; routers and the shared expert's gate excluded."""
    from transformers.pytorch_utils import Conv1D

    base = hf.base_model
    layers = base.h if architecture == "GPT2LMHeadModel" else base.layers
    blocks = []
    for layer in layers:
        found = {}
        for path, module in layer.named_modules():
            if path.rsplit(".", 1)[-1] in ("gate", "shared_expert_gate"):
                continue
            if isinstance(module, torch.nn.Linear):
                found[path] = module.weight.detach()
            elif isinstance(module, Conv1D):
                found[path] = module.weight.detach().T
            elif isinstance(getattr(module, "gate_up_proj", None), torch.nn.Parameter):
                for attribute in ("gate_up_proj", "down_proj"):
                    stack = getattr(module, attribute).detach()
                    found[f"{path}.{attribute}"] = stack.reshape(-1, stack.shape[-1])
        blocks.append(found)
    return blocks


def locate(rows, block):
    """(HF weight path, row indices) of the HF rows that ``rows`` holds (the bridge may split
    a fused weight: GPT-2's c_attn into q, k, v; GPT-NeoX's query_key_value, whose rows
    interleave the heads, by a stride)."""
    for path, weight in block.items():
        if weight.shape[1] != rows.shape[1]:
            continue
        index = {row.numpy().tobytes(): i for i, row in enumerate(weight)}
        found = [index.get(row.numpy().tobytes()) for row in rows]
        if None not in found:
            return path, found
    raise AssertionError(f"rows {tuple(rows.shape)} are not rows of any HF weight")


def test_rtn_is_per_row_rtn_of_the_hf_weights(bridged):
    """Every compressed bridge weight is per-row RTN of the HF rows it holds, and together
    they cover every row of every HF block weight exactly once (routers never)."""
    architecture, folder, model = bridged
    blocks = hf_rows(architecture, fresh_hf(folder))
    targets = target_weights(model)
    weights = RTN(4).compressed_weights(model)
    assert weights.keys() == targets.keys()
    covered = [{path: [] for path in block} for block in blocks]
    for name, target in targets.items():
        block = int(next(p for p in name.split(".") if p.isdigit()))
        assert target.block == block
        original = target.to_rows()
        path, found = locate(original, blocks[block])
        covered[block][path] += found
        expected = rtn_numpy(blocks[block][path], 4)[found]
        np.testing.assert_array_equal(target.to_rows(weights[name]).numpy(), expected, name)
    for block, rows in zip(blocks, covered, strict=True):
        assert {p: sorted(r) for p, r in rows.items()} == {
            path: list(range(weight.shape[0])) for path, weight in block.items()
        }


def test_every_condition_runs_and_restores_the_model(bridged):
    architecture, folder, model = bridged
    before = snapshot(model)
    sae = fitted_sae(model, HOOK)
    conditions = [
        qdm.Reference(),
        RTN(4),
        RTN(3, group_size=16),
        MagnitudePrune(0.5),
        scheme_condition("nf4-b64"),
        scheme_condition("fp8-e4m3"),
        scheme_condition("absmax-int8"),
        MixedRTN({0: 8}, default_bits=4),
        BlockRTN(4, blocks=[1]),
    ]
    tokens = sample_tokens(seed=7, shape=(8, 24))
    result = qdm.audit(model, sae, tokens, conditions)
    null = result.conditions["reference"].correlation
    active = ~np.isnan(null)
    assert active.any()
    np.testing.assert_allclose(null[active], 1.0, atol=1e-6)
    for condition in conditions[1:]:
        r = result.conditions[condition.name].correlation[active]
        assert np.isfinite(r).any() and np.nanmax(r) <= 1 + 1e-6, condition.name
        assert np.nanmin(r) < 1, condition.name  # compression moved something
    assert_untouched(model, before)

    # BlockRTN touches block 1 only; prune halves each expert on its own
    assert all(".1." in n for n in BlockRTN(4, blocks=[1]).compressed_weights(model))
    for name, value in MagnitudePrune(0.5).compressed_weights(model).items():
        for matrix in value if value.ndim == 3 else [value]:
            assert (matrix == 0).sum().item() == round(0.5 * matrix.numel()), name

    weights = RTN(4).compressed_weights(model)
    with applied(model, weights):
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert_untouched(model, before)


def test_refcode_is_refused_on_a_bridge(both):
    with pytest.raises(ValueError, match="rtn-int4-refcode.*rtn-int4"):
        RTN(4, axes="reference").compressed_weights(both[1])


# -------------------------------------------------------------- (c) device_map, max_memory


def test_device_map_and_max_memory_reach_from_pretrained_as_a_planned_map(llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(copy.deepcopy(kwargs))  # transformers rewrites max_memory in place
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    tokens = sample_tokens(seed=2)
    plain = load_model_from_disk(llama, device="cpu", backend="bridge")
    mapped = load_model_from_disk(llama, device_map={"": "cpu"})  # implies the bridge
    budget = load_model(str(llama), max_memory={"cpu": "1GiB"})
    assert seen[1]["device_map"] == {"": "cpu"} and "max_memory" not in seen[1]
    # max_memory is planned into an explicit map first (pytest_qdm.load.placement)
    assert seen[2]["device_map"] == {"": "cpu"} and "max_memory" not in seen[2]
    for model in (mapped, budget):
        assert type(model).__name__ == "TransformerBridge"
        # on CPU alone transformers 5 records no hf_device_map: the kwargs above are the check
        with torch.inference_mode():
            torch.testing.assert_close(model(tokens), plain(tokens), atol=0, rtol=0)


def test_device_map_needs_the_bridge(llama):
    with pytest.raises(ValueError, match="backend='bridge'"):
        load_model_from_disk(llama, backend="hooked", device_map={"": "cpu"})
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model_from_disk(llama, backend="tl")


# ----------------------------------------------------------------------------- (d) refusal


def test_an_unsupported_architecture_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "made-up"
    folder.mkdir()
    config = {"architectures": ["MadeUpForCausalLM"], "model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as refused:
        load_model_from_disk(folder, device="cpu")
    message = str(refused.value)
    assert "\n" not in message
    assert "'MadeUpForCausalLM' is not supported" in message
    assert "LlamaForCausalLM" in message and "GPT2LMHeadModel" in message


def test_hooked_backend_refuses_a_bridge_only_architecture(tmp_path):
    folder = build("GPT2LMHeadModel", tmp_path / "gpt2")
    with pytest.raises(ValueError, match="with backend='hooked'"):
        load_model_from_disk(folder, device="cpu", backend="hooked")
