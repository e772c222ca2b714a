"""Hugging Face config -> TransformerLens config, per supported architecture, with
TransformerLens' own weight converters.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_ARCHITECTURES = (
    "GPTNeoXForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


def _rope_theta(hf_config: Any) -> float:
    theta = getattr(hf_config, "rope_theta", None)  # transformers < 5
    if theta is None:  # transformers >= 5
        theta = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _neox_config(hf: Any) -> dict[str, Any]:
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

    if not getattr(hf, "attention_bias", True):
        raise ValueError("GPT-NeoX checkpoints without attention biases are not supported")
    d_head = hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "LN",
        "parallel_attn_mlp": getattr(hf, "use_parallel_residual", True),
        "positional_embedding_type": "rotary",
        "rotary_dim": round(get_rotary_pct_from_config(hf) * d_head),
        "rotary_base": _rope_theta(hf),
        "rotary_adjacent_pairs": False,
        "default_prepend_bos": False,
    }


def _gemma2_config(hf: Any) -> dict[str, Any]:
    def cap(value: float | None) -> float:
        return -1.0 if value is None else float(value)  # -1: soft-capping off

    layer_types = getattr(hf, "layer_types", None) or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf.num_hidden_layers)
    ]
    return {
        "d_model": hf.hidden_size,
        "d_head": hf.head_dim,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_activation,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "use_normalization_before_and_after": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": hf.head_dim,
        "rotary_base": _rope_theta(hf),
        "use_attn_scale": True,
        "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "use_local_attn": True,
        "window_size": hf.sliding_window,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "attn_scores_soft_cap": cap(hf.attn_logit_softcapping),
        "output_logits_soft_cap": cap(hf.final_logit_softcapping),
        "default_prepend_bos": True,
    }


def _llama_config(hf: Any) -> dict[str, Any]:
    """Llama and Mistral: RMSNorm, rotary on the whole head, SwiGLU, optional GQA."""
    n_kv = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("Llama-family checkpoints with attention or MLP biases are not supported")
    if getattr(hf, "sliding_window", None):
        raise ValueError("Mistral checkpoints with sliding-window attention are not supported")
    return (
        _llama3_rope(hf)
        | _rms_rotary(hf)
        | {
            "n_key_value_heads": None if n_kv == hf.num_attention_heads else n_kv,
            "default_prepend_bos": True,
        }
    )


def _rms_rotary(hf: Any) -> dict[str, Any]:
    """What Llama-style decoders share: RMSNorm, SwiGLU, rotary on the whole head (halves,
    not adjacent pairs)."""
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_base": _rope_theta(hf),
        "rotary_adjacent_pairs": False,
    }


def _no_sliding_window(hf: Any, family: str) -> None:
    if getattr(hf, "use_sliding_window", False) or (
        getattr(hf, "sliding_window", None) and getattr(hf, "use_sliding_window", True)
    ):
        raise ValueError(f"{family} checkpoints with sliding-window attention are not supported")


def _qwen_config(hf: Any, qk_norm: bool) -> dict[str, Any]:
    """Qwen2 (q/k/v biases) and Qwen3 (no biases, RMSNorm on each query and key head), as
    TransformerLens' convert_hf_model_config maps them: RMSNorm, rotary on the whole head
    (halves, not adjacent pairs), SwiGLU, GQA, no BOS prepended by default."""
    family = "Qwen3" if qk_norm else "Qwen2"
    n_kv = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    if qk_norm and getattr(hf, "attention_bias", False):
        raise ValueError("Qwen3 checkpoints with attention biases are not supported")
    _no_sliding_window(hf, family)
    _default_rope(hf, family)
    return _rms_rotary(hf) | {
        # TL's Qwen2 converter always writes _W_K/_W_V (grouped-query parameters)
        "n_key_value_heads": n_kv if not qk_norm or n_kv != hf.num_attention_heads else None,
        "use_qk_norm": qk_norm,
        "default_prepend_bos": False,
    }


def _llama3_rope(hf: Any) -> dict[str, Any]:
    """Llama 3.1+ "llama3" RoPE scaling as TransformerLens' NTK-by-parts settings; any other
    scaling is refused (it would load with plain RoPE and give wrong activations)."""
    rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "llama3":
        _default_rope(hf, "Llama-family", rope)
        return {}
    return {
        "use_NTK_by_parts_rope": True,
        "NTK_original_ctx_len": rope.get(
            "original_max_position_embeddings", hf.max_position_embeddings
        ),
        "NTK_by_parts_low_freq_factor": rope.get("low_freq_factor", 1.0),
        "NTK_by_parts_high_freq_factor": rope.get("high_freq_factor", 4.0),
        "NTK_by_parts_factor": rope.get("factor", 1.0),
    }


def _default_rope(hf: Any, family: str, rope: dict | None = None) -> None:
    if rope is None:  # transformers >= 5: rope_parameters; < 5: rope_scaling
        rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"{family} checkpoints with {kind!r} RoPE scaling are not supported")


def _gemma3_config(hf: Any) -> dict[str, Any]:
    """Gemma-3 text models: Gemma-2's sandwich norms and (1 + w) RMSNorm, plus RMSNorm on
    each query and key head, local layers with their own RoPE base, and linear RoPE scaling
    on the global layers (TransformerLens' ``rotary_base_local``/``rotary_scaling_factor``)."""
    config = _gemma2_config(hf)
    rope = getattr(hf, "rope_parameters", None) or {}
    if "full_attention" in rope:  # transformers >= 5: one entry per layer type
        full, local = rope["full_attention"], rope.get("sliding_attention", {})
    else:  # transformers < 5
        full = {**rope, "rope_theta": _rope_theta(hf), **(getattr(hf, "rope_scaling", None) or {})}
        local = {"rope_theta": getattr(hf, "rope_local_base_freq", 10000.0)}
    factor = 1.0
    if full.get("rope_type", "default") == "linear":
        factor = float(full["factor"])
    else:
        _default_rope(hf, "Gemma-3", full)
    _default_rope(hf, "Gemma-3", local)
    config.update(
        rotary_base=float(full.get("rope_theta", 1_000_000.0)),
        rotary_base_local=float(local.get("rope_theta", 10_000.0)),
        rotary_scaling_factor=factor,
        use_qk_norm=True,
        # transformers' Gemma-3 attention never applies attn_logit_softcapping (None in
        # the released configs); the final-logit soft-capping it does apply is kept
        attn_scores_soft_cap=-1.0,
    )
    return config


def _mixtral_config(hf: Any) -> dict[str, Any]:
    """Mixtral: Mistral's attention, every MLP a top-k mixture of SwiGLU experts; the top-k
    router weights are renormalized (TransformerLens pins ``norm_topk_prob`` like HF)."""
    config = _llama_config(hf)
    config.update(
        num_experts=hf.num_local_experts,
        experts_per_token=hf.num_experts_per_tok,
        norm_topk_prob=True,
    )
    return config


def _converters(architecture: str):
    """(HF config -> TransformerLens config dict, TransformerLens' weight converter)."""
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
        convert_mistral_weights,
        convert_mixtral_weights,
        convert_neox_weights,
        convert_qwen2_weights,
        convert_qwen3_weights,
    )

    return {
        "GPTNeoXForCausalLM": (_neox_config, convert_neox_weights),
        "Gemma2ForCausalLM": (_gemma2_config, convert_gemma_weights),
        "Gemma3ForCausalLM": (_gemma3_config, convert_gemma_weights),
        "LlamaForCausalLM": (_llama_config, convert_llama_weights),
        "MistralForCausalLM": (_llama_config, convert_mistral_weights),
        "MixtralForCausalLM": (_mixtral_config, convert_mixtral_weights),
        "Qwen2ForCausalLM": (lambda hf: _qwen_config(hf, qk_norm=False), convert_qwen2_weights),
        "Qwen3ForCausalLM": (lambda hf: _qwen_config(hf, qk_norm=True), convert_qwen3_weights),
    }[architecture]
