"""NF4, FP8 and absmax-INT8 against independent computations on the HF [out, in] layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.schemes import NF4_CODEBOOK
from pytest_qdm.compress.targets import target_weights

# QLoRA's NF4 values (Dettmers et al. 2023, appendix E), as printed there.
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]  # fmt: skip


def nf4_numpy(rows: np.ndarray, block: int) -> np.ndarray:
    out = np.empty_like(rows)
    codes = np.array(PUBLISHED_NF4, dtype=np.float32)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], block):
            w = rows[r, start : start + block]
            absmax = np.abs(w).max()
            if absmax == 0:
                out[r, start : start + block] = 0
                continue
            nearest = np.abs(w[:, None] / absmax - codes[None, :]).argmin(axis=1)
            out[r, start : start + block] = codes[nearest] * absmax
    return out


def test_codebook_is_the_published_one():
    assert list(NF4_CODEBOOK) == PUBLISHED_NF4 and len(set(NF4_CODEBOOK)) == 16


@pytest.mark.parametrize("block", [16, 64, 48])
def test_nf4_equals_blockwise_nearest_code(neox_model, block):
    weights = qdm.NF4(block_size=block).compressed_weights(neox_model)
    for name, target in target_weights(neox_model).items():
        ours = target.to_rows(weights[name]).numpy()
        np.testing.assert_allclose(ours, nf4_numpy(target.to_rows().numpy(), block), atol=1e-7)


def test_fp8_equals_a_per_channel_round_trip(neox_model):
    for fmt, dtype, fmax in [
        ("e4m3", torch.float8_e4m3fn, 448.0),
        ("e5m2", torch.float8_e5m2, 57344.0),
    ]:
        weights = qdm.FP8(fmt).compressed_weights(neox_model)
        for name, target in target_weights(neox_model).items():
            rows = target.to_rows().double()
            scale = rows.abs().amax(dim=1, keepdim=True) / fmax
            expected = (rows / scale).float().to(dtype).double() * scale
            np.testing.assert_allclose(target.to_rows(weights[name]).double(), expected, rtol=1e-6)


def test_absmax_int8_uses_one_scale_per_tensor(neox_model):
    weights = qdm.AbsmaxINT8().compressed_weights(neox_model)
    for name, target in target_weights(neox_model).items():
        w = target.param.data.double().numpy()
        scale = np.abs(w).max() / 127
        np.testing.assert_allclose(
            weights[name].double().numpy(),
            np.clip(np.round(w / scale), -127, 127) * scale,
            atol=1e-6,
        )


def test_schemes_sit_between_rtn_bit_budgets(neox_model, neox_sae, neox_tokens):
    conditions = [qdm.RTN(8), qdm.FP8("e4m3"), qdm.AbsmaxINT8(), qdm.NF4(), qdm.RTN(4), qdm.RTN(3)]
    result = qdm.audit(
        neox_model, neox_sae, neox_tokens, conditions, qdm.AuditConfig(progress=False)
    )
    mean_r = {name: c.summary.mean_correlation for name, c in result.conditions.items()}
    assert mean_r["nf4-b64"] > mean_r["rtn-int3"]
    assert min(mean_r["fp8-e4m3"], mean_r["absmax-int8"]) > mean_r["rtn-int4"]


def test_schemes_on_the_bundled_model_sit_where_their_bit_budgets_say():
    """Measured (8,192 tokens): mean r INT8 0.9999 > absmax-INT8 > INT7 > FP8-e4m3 > INT6...;
    FP8-e5m2 between INT6 and INT4; NF4 (4 bits, blocks of 64) above RTN INT4."""
    tiny = qdm.load_preset("tiny")
    conditions = [
        *(qdm.RTN(b) for b in (8, 7, 6, 4)),
        qdm.AbsmaxINT8(),
        qdm.FP8("e4m3"),
        qdm.FP8("e5m2"),
        qdm.NF4(),
    ]
    result = qdm.audit(
        tiny.model, tiny.sae, tiny.tokens(8192), conditions, qdm.AuditConfig(progress=False)
    )
    r = {name: c.summary.mean_correlation for name, c in result.conditions.items()}
    assert r["rtn-int8"] > r["absmax-int8"] > r["rtn-int7"]  # per-tensor: a coarser INT8
    assert r["rtn-int7"] > r["fp8-e4m3"] > r["fp8-e5m2"] > r["rtn-int4"]  # 3 / 2 mantissa bits
    assert r["rtn-int6"] > r["fp8-e5m2"]
    assert r["nf4-b64"] > r["rtn-int4"]  # the same 4 bits, finer (blockwise) scales
    survived = {name: c.summary.survived_pct for name, c in result.conditions.items()}
    assert survived["nf4-b64"] >= survived["rtn-int4"]


@pytest.mark.parametrize(
    ("text", "name", "condition"),
    [
        ("nf4", "nf4-b64", qdm.NF4(64)),
        ("NF4-b128", "nf4-b128", qdm.NF4(128)),
        ("fp8-e5m2", "fp8-e5m2", qdm.FP8("e5m2")),
        ("absmax-int8", "absmax-int8", qdm.AbsmaxINT8()),
        ("int4-g128", "rtn-int4-g128", qdm.RTN(4, group_size=128)),
    ],
)
def test_scheme_names_from_the_command_line(text, name, condition):
    from pytest_qdm.compress.names import scheme_name
    from pytest_qdm.compress.schemes import scheme_condition

    assert scheme_name(text) == name
    assert scheme_condition(name) == condition and condition.name == name


@pytest.mark.parametrize("text", ["nf5", "fp8-e3m4", "int9-g64", "nf4-b0", "int4", "rtn"])
def test_unknown_scheme_names_are_refused(text):
    from pytest_qdm.compress.names import scheme_name

    with pytest.raises(ValueError, match="is not a scheme; use nf4, nf4-dq, nf4-b128"):
        scheme_name(text)


def test_scheme_arguments_are_checked():
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        qdm.NF4(block_size=0)
    with pytest.raises(ValueError, match="format must be one of"):
        qdm.FP8("e3m4")
    assert (qdm.NF4().name, qdm.FP8().name, qdm.AbsmaxINT8().name) == (
        "nf4-b64",
        "fp8-e4m3",
        "absmax-int8",
    )
