"""Convert a Hugging Face ``LlamaForCausalLM`` checkpoint into a TransformerLens HookedTransformer.

The weights are mapped with TransformerLens's own ``convert_llama_weights`` and loaded as
stored: no layer-norm folding, no centering of writing weights or unembedding, so a
quantizer applied to the HookedTransformer sees the checkpoint's own numbers (RMSNorm
gains stay in ``ln*.w``). ``default_prepend_bos`` is True (rows are ``[BOS] + 127`` tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tl_config(hf_config: Any, n_ctx: int = 128) -> Any:
    from transformer_lens import HookedTransformerConfig

    d_head = hf_config.hidden_size // hf_config.num_attention_heads
    n_kv = hf_config.num_key_value_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return HookedTransformerConfig(
        model_name="qdm-tiny-v2",
        n_layers=hf_config.num_hidden_layers,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        d_head=d_head,
        d_mlp=hf_config.intermediate_size,
        d_vocab=hf_config.vocab_size,
        n_ctx=n_ctx,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=float(theta),
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        final_rms=True,
        eps=hf_config.rms_norm_eps,
        n_key_value_heads=None if n_kv == hf_config.num_attention_heads else n_kv,
        original_architecture="LlamaForCausalLM",
        default_prepend_bos=True,
        tokenizer_prepends_bos=False,
        dtype=hf_config.dtype if hasattr(hf_config, "dtype") else None,
    )


def hf_to_tl(hf_model: Any, tokenizer: Any = None, n_ctx: int = 128) -> Any:
    """HookedTransformer with the HF model's weights (unfolded), in eval mode."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = tl_config(hf_model.config, n_ctx)
    cfg.dtype = torch.float32
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = convert_llama_weights(hf_model, cfg)
    state = {k: v.detach().clone().float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos"))]
    if bad or unexpected:
        raise RuntimeError(f"conversion mismatch: missing={bad} unexpected={unexpected}")
    return model.eval()


def load_tl(folder: str | Path, n_ctx: int = 128) -> Any:
    """Load ``folder`` (config.json + model.safetensors + tokenizer) as a HookedTransformer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).float().eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return hf_to_tl(hf, tok, n_ctx)


def check_logits(hf_model: Any, tl_model: Any, tokens: Any, atol: float = 1e-4) -> float:
    """Max |HF logits - TL logits| on ``tokens``; raises if above ``atol``."""
    import torch

    with torch.no_grad():
        a = hf_model(tokens).logits
        b = tl_model(tokens)
    diff = float((a - b).abs().max())
    if diff > atol:
        raise RuntimeError(f"HF vs TL logits differ by {diff} > {atol}")
    return diff
