"""Deployed quantization schemes beyond per-channel RTN, simulated and dequantized.

Same weight selection as RTN (block linear weights only), on the Hugging Face [out, in]
layout. Per-tensor schemes act on each TransformerLens tensor, which is one HF ``nn.Linear``
except for GPT-NeoX's fused query_key_value (split into W_Q, W_K, W_V here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from pytest_qdm.compress.conditions import RTN, Condition
from pytest_qdm.compress.names import SCHEME_NAME
from pytest_qdm.compress.targets import target_weights

# The NormalFloat-4 codebook of QLoRA (Dettmers et al., 2023), as bitsandbytes ships it.
NF4_CODEBOOK = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
FP8_FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def nf4_rows(rows: torch.Tensor, block_size: int, double_quant: bool = False) -> torch.Tensor:
    """NF4 with one absmax per block of ``block_size`` inputs along each row (a short last
    block where the width is not a multiple), each value snapped to the nearest code.

    ``double_quant``: the absmaxes of the whole tensor are stored in 8 bits as bitsandbytes
    does (``bnb_4bit_use_double_quant``, :func:`double_quantized`); the codes are unchanged.
    """
    out_features, in_features = rows.shape
    pad = -in_features % block_size
    padded = torch.nn.functional.pad(rows.float(), (0, pad))
    blocks = padded.reshape(out_features, -1, block_size)
    absmax = blocks.abs().amax(dim=-1, keepdim=True)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codebook = torch.tensor(NF4_CODEBOOK, dtype=torch.float32, device=rows.device)
    midpoints = (codebook[1:] + codebook[:-1]) / 2
    nearest = torch.bucketize(scaled.contiguous(), midpoints)  # ties go down
    if double_quant:
        absmax = double_quantized(absmax.reshape(-1)).reshape(absmax.shape)
    dequantized = (codebook[nearest] * absmax).reshape(out_features, -1)
    return dequantized[:, :in_features].to(rows.dtype)


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (``create_dynamic_map()``: 7 exponent bits,
    a linear fraction per decade, plus 0 and 1), the code of its 8-bit blockwise absmax."""
    values: list[float] = [0.0, 1.0]
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        values += (10 ** (i - 6) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def double_quantized(absmax: torch.Tensor, block_size: int = 256) -> torch.Tensor:
    """The absmaxes as bitsandbytes' double quantization stores and restores them: minus
    their mean, the 8-bit dynamic code per block of 256 scaled by the block's absmax, plus
    the mean. Codes are chosen as bitsandbytes' reference (pure torch) kernel does; its
    native CPU kernel's approximate binary search can pick the neighbouring code in
    near-ties (tests/load/test_checkpoints.py measures how often)."""
    offset = absmax.mean()
    code = dynamic_map().to(absmax.device)
    bounds = (code[:-1] + code[1:]) / 2
    restored = []
    for chunk in (absmax - offset).split(block_size):
        scale = chunk.abs().max().clamp(min=1e-38)
        # full blocks are multiplied by the reciprocal, a short last block divided
        scaled = chunk * (1.0 / scale) if chunk.numel() == block_size else chunk / scale
        restored.append(code[torch.bucketize(scaled.clamp(-1, 1), bounds)] * scale)
    return torch.cat(restored) + offset


def fp8_rows(rows: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round trip through torch's float8 dtype, scaling each row's absmax to the format's max."""
    dtype = FP8_FORMATS[fmt]
    absmax = rows.float().abs().amax(dim=1, keepdim=True)
    scale = absmax / torch.finfo(dtype).max
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((rows.float() / safe).to(dtype).float() * scale).to(rows.dtype)


def absmax_int8(weight: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric INT8: one scale, max|w| / 127, for the whole tensor."""
    scale = weight.float().abs().max() / 127
    if scale == 0:
        return weight.clone()
    return (torch.clamp(torch.round(weight.float() / scale), -127, 127) * scale).to(weight.dtype)


class _RowScheme(Condition):
    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compressed_weights(self, model, layers=None):
        return {
            name: target.from_rows(self._rows(target.to_rows()))
            for name, target in target_weights(model, layers).items()
        }


@dataclass(frozen=True)
class NF4(_RowScheme):
    """bitsandbytes-style NF4: blockwise absmax along the input axis, 16-value codebook;
    ``double_quant`` stores the absmaxes in 8 bits (``bnb_4bit_use_double_quant=True``)."""

    block_size: int = 64
    double_quant: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.block_size, bool)
            or not isinstance(self.block_size, int)
            or self.block_size < 1
        ):
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant must be True or False, got {self.double_quant!r}")

    @property
    def name(self) -> str:
        return f"nf4{'-dq' if self.double_quant else ''}-b{self.block_size}"

    def _rows(self, rows):
        return nf4_rows(rows, self.block_size, self.double_quant)

    def describe(self):
        return super().describe().model_copy(update={"bits": 4, "group_size": self.block_size})


@dataclass(frozen=True)
class FP8(_RowScheme):
    """FP8 (e4m3 or e5m2) with per-output-channel scaling."""

    format: Literal["e4m3", "e5m2"] = "e4m3"

    def __post_init__(self) -> None:
        if self.format not in FP8_FORMATS:
            raise ValueError(f"format must be one of {sorted(FP8_FORMATS)}, got {self.format!r}")

    @property
    def name(self) -> str:
        return f"fp8-{self.format}"

    def _rows(self, rows):
        return fp8_rows(rows, self.format)

    def describe(self):
        return super().describe().model_copy(update={"bits": 8})


@dataclass(frozen=True)
class AbsmaxINT8(Condition):
    """Per-tensor absmax INT8 (one scale per weight tensor)."""

    @property
    def name(self) -> str:
        return "absmax-int8"

    def compressed_weights(self, model, layers=None):
        return {
            name: target.per_matrix(absmax_int8)
            for name, target in target_weights(model, layers).items()
        }

    def describe(self):
        return super().describe().model_copy(update={"bits": 8})


def scheme_condition(name: str) -> Condition:
    """The condition of a canonical scheme name (``config.scheme_name``), e.g. ``nf4-b64``."""
    match = SCHEME_NAME.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a scheme name like nf4-b64, fp8-e4m3, absmax-int8")
    if match["block"]:
        return NF4(int(match["block"]), double_quant=bool(match["dq"]))
    if match["fp8"]:
        return FP8(match["fp8"])
    if match["absmax"]:
        return AbsmaxINT8()
    if match["refbits"]:
        return RTN(int(match["refbits"]), axes="reference")
    return RTN(int(match["bits"]), group_size=int(match["group"]))
