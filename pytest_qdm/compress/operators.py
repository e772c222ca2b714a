"""The compression operators on [out, in] rows: symmetric round-to-nearest (per row or per
group, or as the reference study's code computed it) and magnitude pruning."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    pass

from pytest_qdm.compress.names import BIT_WIDTHS, valid_bits
from pytest_qdm.compress.targets import Target


def rtn_rows(
    rows: torch.Tensor, bits: int, group_size: int | None = None, own_dtype: bool = False
) -> torch.Tensor:
    """Symmetric round-to-nearest of a [out, in] matrix, one scale per row (or per group).

    qmax = 2^(bits-1) - 1; scale = max|w| / qmax; w' = clamp(round(w / scale), -qmax, qmax)
    * scale, computed in float32 (``own_dtype``: in the input's dtype, as the reference
    study's code did) and returned in the input dtype. All-zero rows stay zero.
    """
    out_features, in_features = rows.shape
    group = in_features if group_size is None else group_size
    if in_features % group:
        raise ValueError(
            f"group_size={group_size} does not divide the input width {in_features}; "
            "choose a divisor of every compressed weight's input width"
        )
    qmax = 2 ** (bits - 1) - 1
    work = rows if own_dtype else rows.float()
    grouped = work.reshape(out_features, in_features // group, group)
    scale = grouped.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.clamp(torch.round(grouped / safe), -qmax, qmax) * scale
    return quantized.reshape(out_features, in_features).to(rows.dtype)


def prune_smallest(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``round(sparsity * numel)`` smallest-magnitude entries (stable ties)."""
    count = round(sparsity * weight.numel())
    flat = weight.flatten().clone()
    if count:
        order = torch.argsort(flat.abs().float(), stable=True)
        flat[order[:count]] = 0
    return flat.reshape(weight.shape)


def check_bits(bits: int) -> None:
    if not valid_bits(bits):
        raise ValueError(f"bits must be an integer in {BIT_WIDTHS}, got {bits!r}")


RTN_AXES = ("channel", "reference")


def rtn_reference_axes(target: Target, bits: int) -> torch.Tensor:
    """RTN as the reference study's code computed it: in the weight's own dtype (bfloat16
    for a bf16 model), W_Q/W_K/W_V [heads, d_model, d_head] reduced over every dim but the
    last, one scale per d_head index shared across heads (a known flaw, kept to reproduce its
    tables); other weights per output channel."""
    if target.kind not in ("W_Q", "W_K", "W_V"):
        return target.from_rows(rtn_rows(target.to_rows(), bits, own_dtype=True))
    weight = target.param.data
    heads, d_model, d_head = weight.shape
    per_index = weight.permute(2, 0, 1).reshape(d_head, heads * d_model)  # a row per d_head
    rounded = rtn_rows(per_index, bits, own_dtype=True)
    return rounded.reshape(d_head, heads, d_model).permute(1, 2, 0).contiguous()
