"""Analytic matmul FLOPs per token and the machine's measured dense matmul rate."""

from __future__ import annotations

import time

import torch


def block_flops(cfg, ctx: int) -> int:
    """Matmul FLOPs per token of one transformer block (multiply-add = 2 FLOPs).

    Attention scores and pattern x values are counted over the full ctx x ctx square, as
    TransformerLens computes them before the causal mask.
    """
    q_width = cfg.n_heads * cfg.d_head
    kv_width = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    projections = 2 * cfg.d_model * (2 * q_width + 2 * kv_width)  # Q, K, V, O
    attention = 2 * 2 * ctx * q_width  # QK^T and pattern @ V
    mlp = (3 if cfg.gated_mlp else 2) * 2 * cfg.d_model * cfg.d_mlp
    return projections + attention + mlp


def engine_flops(cfg, ctx: int, read_layer: int, d_sae: int) -> int:
    """Per token and pass: forward through blocks 0..read_layer + the SAE encode."""
    return (read_layer + 1) * block_flops(cfg, ctx) + 2 * cfg.d_model * d_sae


def full_flops(cfg, ctx: int, d_sae: int) -> int:
    """Per token and pass: the full forward with unembedding + the SAE encode."""
    unembed = 2 * cfg.d_model * cfg.d_vocab
    return cfg.n_layers * block_flops(cfg, ctx) + unembed + 2 * cfg.d_model * d_sae


def matmul_flops_per_s(
    n: int = 4096, repeats: int = 5, device: str = "cpu", dtype=torch.float32
) -> float:
    """Best of ``repeats`` timings of an [n, n] @ [n, n] matmul into a preallocated output."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        _sync(device)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
