"""Hugging Face config -> TransformerLens config, per supported architecture, with
TransformerLens' own weight converters.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_ARCHITECTURES = (
    "GPTNeoXForCausalLM",
    "Gemma2ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
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
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    n_kv = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("Llama-family checkpoints with attention or MLP biases are not supported")
    if getattr(hf, "sliding_window", None):
        raise ValueError("Mistral checkpoints with sliding-window attention are not supported")
    return {
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": None if n_kv == hf.num_attention_heads else n_kv,
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
        "default_prepend_bos": True,
    }


def _converters(architecture: str):
    """(HF config -> TransformerLens config dict, TransformerLens' weight converter)."""
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
        convert_mistral_weights,
        convert_neox_weights,
    )

    return {
        "GPTNeoXForCausalLM": (_neox_config, convert_neox_weights),
        "Gemma2ForCausalLM": (_gemma2_config, convert_gemma_weights),
        "LlamaForCausalLM": (_llama_config, convert_llama_weights),
        "MistralForCausalLM": (_llama_config, convert_mistral_weights),
    }[architecture]
