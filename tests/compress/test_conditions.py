"""Compression operators against independent formulas on Hugging Face layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_qdm.compress.conditions import RTN, Candidate, MagnitudePrune, Reference
from pytest_qdm.compress.swap import applied
from pytest_qdm.compress.targets import target_weights
from tests.helpers.factories import (
    build_model,
    hf_gemma2,
    hf_neox,
    hooked_config_of,
    neox_config,
)


def rtn_numpy(weight: np.ndarray, bits: int, group: int | None = None) -> np.ndarray:
    """Per-row RTN of an HF nn.Linear weight [out, in], written from docs/definitions.md directly."""
    qmax = 2 ** (bits - 1) - 1
    out = np.empty_like(weight)
    group = group or weight.shape[1]
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], group):
            w = weight[row, start : start + group]
            scale = np.float32(np.abs(w).max()) / np.float32(qmax)
            if scale == 0:
                out[row, start : start + group] = 0
                continue
            out[row, start : start + group] = np.clip(np.round(w / scale), -qmax, qmax) * scale
    return out


def as_hooked(hf_model, tl_config, convert):
    """The HF model's block weights, converted by TransformerLens, in a HookedTransformer."""
    model = build_model(tl_config)
    converted = convert(hf_model, tl_config)
    with torch.no_grad():
        for name, target in target_weights(model).items():
            target.param.copy_(converted[name])
    return model


NEOX_LINEARS = (
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
)
GEMMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
)
GEMMA_LINEARS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def rtn_hf_copy(hf_model, linears, bits, group=None):
    quantized = {k: v.clone() for k, v in hf_model.state_dict().items()}
    for key, value in quantized.items():
        if key.endswith(".weight") and any(f".{linear}." in key for linear in linears):
            quantized[key] = torch.from_numpy(rtn_numpy(value.numpy(), bits, group))
    copy = type(hf_model)(hf_model.config).eval()
    copy.load_state_dict(quantized)
    return copy


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("arch", ["neox", "gemma2"])
def test_rtn_equals_per_row_rtn_of_hf_linear_weights(arch, bits):
    from transformer_lens.pretrained.weight_conversions.gemma import (
        convert_gemma_weights,
    )
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    build, linears, convert = {
        "neox": (hf_neox, NEOX_LINEARS, convert_neox_weights),
        "gemma2": (hf_gemma2, GEMMA_LINEARS, convert_gemma_weights),
    }[arch]
    hf_model = build()
    tl_config = hooked_config_of(hf_model)
    model = as_hooked(hf_model, tl_config, convert)
    ours = RTN(bits).compressed_weights(model)
    expected = convert(rtn_hf_copy(hf_model, linears, bits), tl_config)
    assert set(ours) == set(target_weights(model))
    for name, tensor in ours.items():
        np.testing.assert_allclose(tensor.numpy(), expected[name].detach().numpy(), atol=1e-7)


def test_group_wise_rtn_equals_per_group_rtn_of_hf_weights():
    from transformer_lens.pretrained.weight_conversions.gemma import (
        convert_gemma_weights,
    )

    hf_model = hf_gemma2()
    tl_config = hooked_config_of(hf_model)
    model = as_hooked(hf_model, tl_config, convert_gemma_weights)
    ours = RTN(4, group_size=8).compressed_weights(model)
    expected = convert_gemma_weights(rtn_hf_copy(hf_model, GEMMA_LINEARS, 4, 8), tl_config)
    for name, tensor in ours.items():
        np.testing.assert_allclose(tensor.numpy(), expected[name].detach().numpy(), atol=1e-7)


def test_gqa_and_gated_mlp_weights_are_targeted(gemma_like_model):
    names = set(RTN(6).compressed_weights(gemma_like_model))
    assert "blocks.0.attn._W_K" in names and "blocks.0.attn._W_V" in names
    assert "blocks.1.mlp.W_gate" in names
    assert not any(n.endswith(("attn.W_K", "attn.W_V")) for n in names)


def test_only_block_linear_weights_change(neox_model):
    weights = RTN(3).compressed_weights(neox_model)
    before = {k: v.clone() for k, v in neox_model.state_dict().items()}
    with applied(neox_model, weights):
        after = neox_model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
    untouched = [k for k in before if k.startswith(("embed", "unembed", "ln_final"))]
    untouched += [k for k in before if ".ln" in k or ".b_" in k]
    assert changed and changed <= set(weights)
    assert not changed & set(untouched)


def test_all_zero_channel_stays_zero(neox_model):
    with torch.no_grad():
        saved = neox_model.blocks[0].mlp.W_in[:, 3].clone()
        neox_model.blocks[0].mlp.W_in[:, 3] = 0
    try:
        quantized = RTN(4).compressed_weights(neox_model)["blocks.0.mlp.W_in"]
        assert torch.all(quantized[:, 3] == 0) and torch.isfinite(quantized).all()
    finally:
        with torch.no_grad():
            neox_model.blocks[0].mlp.W_in[:, 3] = saved


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.9])
def test_pruning_zeroes_exactly_the_requested_count(neox_model, sparsity):
    weights = MagnitudePrune(sparsity).compressed_weights(neox_model)
    originals = target_weights(neox_model)
    for name, pruned in weights.items():
        original = originals[name].param.data
        newly_zero = int(((pruned == 0) & (original != 0)).sum())
        assert newly_zero == round(sparsity * original.numel())
        kept = pruned != 0
        assert torch.equal(pruned[kept], original[kept])
        if kept.any() and (~kept).any():
            assert original[~kept].abs().max() <= original[kept].abs().min()


def test_pruning_ties_are_deterministic():
    from pytest_qdm.compress.operators import prune_smallest

    weight = torch.tensor([1.0, -1.0, 1.0, 2.0, 1.0])
    assert prune_smallest(weight, 0.4).tolist() == [0.0, 0.0, 1.0, 2.0, 1.0]


def test_layers_restrict_the_compressed_blocks(neox_model):
    names = RTN(6).compressed_weights(neox_model, layers=range(2))
    assert names and all(n.startswith(("blocks.0.", "blocks.1.")) for n in names)


def test_applied_restores_bit_exactly_even_when_the_body_raises(neox_model):
    before = {k: v.clone() for k, v in neox_model.state_dict().items()}
    weights = RTN(2).compressed_weights(neox_model)
    with pytest.raises(RuntimeError, match="boom"), applied(neox_model, weights):
        raise RuntimeError("boom")
    after = neox_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reference_changes_nothing(neox_model):
    assert Reference().compressed_weights(neox_model) == {}


def test_condition_names_are_stable():
    assert RTN(6).name == "rtn-int6"
    assert RTN(4, group_size=128).name == "rtn-int4-g128"
    assert MagnitudePrune(0.175).name == "prune-0.175"
    assert Reference().name == "reference"


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        RTN(bits)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudePrune(sparsity)


def test_group_size_must_divide_the_input_width(neox_model):
    with pytest.raises(ValueError, match="group_size=48 does not divide the input width 64"):
        RTN(4, group_size=48).compressed_weights(neox_model)


def test_candidate_with_other_shapes_is_refused(neox_model):
    other = build_model(neox_config(d_mlp=128))
    with pytest.raises(ValueError, match="does not match the reference architecture"):
        Candidate(other, "small-mlp").compressed_weights(neox_model)


def test_reference_code_axes_share_one_scale_across_heads(gemma_like_model):
    """RTN(axes="reference") is the reference study's rounding: W_Q/W_K/W_V scaled per
    d_head index over every head and input (an independent numpy formula); every other
    weight is the contract's per-channel RTN."""
    bits, qmax = 4, 7
    reference_code = RTN(bits, axes="reference")
    assert reference_code.name == "rtn-int4-refcode"
    ours = reference_code.compressed_weights(gemma_like_model)
    channel = RTN(bits).compressed_weights(gemma_like_model)
    params = dict(gemma_like_model.named_parameters())
    shared = 0
    for name, weight in ours.items():
        w = params[name].detach().numpy().astype(np.float64)
        if name.rsplit(".", 1)[-1].lstrip("_") in ("W_Q", "W_K", "W_V"):
            scale = np.abs(w).max(axis=(0, 1), keepdims=True) / qmax
            expected = np.clip(np.round(w / scale), -qmax, qmax) * scale
            np.testing.assert_allclose(weight.numpy(), expected, rtol=0, atol=1e-6)
            shared += not torch.equal(weight, channel[name])
        else:
            assert torch.equal(weight, channel[name]), name
    assert shared > 0  # the shared scale rounds Q/K/V differently from per-channel RTN
    with pytest.raises(ValueError, match="takes no group_size"):
        RTN(4, group_size=32, axes="reference")
    with pytest.raises(ValueError, match="axes must be one of"):
        RTN(4, axes="heads")


def test_reference_code_axes_option_adds_labelled_conditions():
    from pytest_qdm.compress.schemes import scheme_condition
    from pytest_qdm.options_parse import build_options

    options = build_options(
        {"model": "tiny", "bits": "8,4", "match-bits": 4, "rtn-axes": "reference"}
    )
    assert options.audited_schemes == ("rtn-int8-refcode", "rtn-int4-refcode")
    assert scheme_condition("rtn-int6-refcode") == RTN(6, axes="reference")
    assert build_options({"model": "tiny", "schemes": "int6-refcode"}).schemes == (
        "rtn-int6-refcode",
    )
    with pytest.raises(ValueError, match="--qdm-rtn-axes"):
        build_options({"model": "tiny", "rtn-axes": "heads"})


def test_nf4_double_quant_names_and_scales():
    from pytest_qdm.compress.names import scheme_name
    from pytest_qdm.compress.schemes import NF4, nf4_rows, scheme_condition

    assert scheme_name("nf4-dq") == "nf4-dq-b64"
    assert scheme_condition("nf4-dq-b64") == NF4(64, double_quant=True)
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    plain, dq = nf4_rows(w, 64), nf4_rows(w, 64, double_quant=True)
    # same 4-bit codes: every weight's ratio to its block's max code value is unchanged
    assert torch.equal(torch.sign(plain), torch.sign(dq))
    assert 0 < float((plain - dq).abs().max()) < 0.02 * float(w.abs().max())


def test_reference_code_rounds_in_the_weights_own_dtype(gemma_like_model):
    """On a bf16 model RTN(axes="reference") equals the study's formula run in bfloat16
    (an independent torch formula per TransformerLens layout), bit for bit, and differs
    from rounding in float32 and casting, which per-channel RTN keeps."""
    import copy

    model = copy.deepcopy(gemma_like_model).to(torch.bfloat16)
    qmax = 7
    reduce = {"W_Q": (0, 1), "W_K": (0, 1), "W_V": (0, 1), "W_O": (0, 1)}
    reduce |= {"W_in": (0,), "W_gate": (0,), "W_out": (0,)}
    ours = RTN(4, axes="reference").compressed_weights(model)
    params = dict(model.named_parameters())
    in_float32 = 0
    for name, weight in ours.items():
        w = params[name].detach()
        assert w.dtype == weight.dtype == torch.bfloat16
        scale = w.abs().amax(dim=reduce[name.rsplit(".", 1)[-1].lstrip("_")], keepdim=True) / qmax
        expected = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
        assert torch.equal(weight, expected), name
        scale32 = (
            w.float().abs().amax(dim=reduce[name.rsplit(".", 1)[-1].lstrip("_")], keepdim=True)
            / qmax
        )
        cast = (torch.clamp(torch.round(w.float() / scale32), -qmax, qmax) * scale32).bfloat16()
        in_float32 += int((cast != weight).sum())
    assert in_float32 > 0  # bf16 arithmetic rounds some weights differently
