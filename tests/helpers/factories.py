"""Tiny models built from a config, for unit tests: TransformerLens configs and models,
real sae_lens SAEs fitted to them, and tiny Hugging Face checkpoints saved to a folder."""

from __future__ import annotations

import numpy as np
import torch


def neox_config(**overrides):
    """A Pythia-shaped (GPT-NeoX) config: rotary, parallel attention + MLP, LayerNorm."""
    from transformer_lens import HookedTransformerConfig

    settings = dict(
        n_layers=3,
        d_model=64,
        n_ctx=32,
        d_head=16,
        n_heads=4,
        d_mlp=256,
        d_vocab=97,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=8,
        parallel_attn_mlp=True,
        seed=0,
    )
    settings.update(overrides)
    return HookedTransformerConfig(**settings)


def gemma_like_config(**overrides):
    """A Gemma-2-like config: grouped-query attention, gated MLP, RMSNorm."""
    settings = dict(
        n_key_value_heads=2,
        gated_mlp=True,
        normalization_type="RMS",
        parallel_attn_mlp=False,
        rotary_dim=16,
    )
    return neox_config(**{**settings, **overrides})


def build_model(config):
    import torch
    from transformer_lens import HookedTransformer

    torch.manual_seed(config.seed or 0)
    model = HookedTransformer(config)
    with torch.no_grad():  # TL's default init is tiny; widen it so compression bites
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0, 0.5 / param.shape[-2] ** 0.5 if param.ndim == 2 else 0.1)
    return model.eval()


def random_tokens(model, n_sequences=16, seed=1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (n_sequences, model.cfg.n_ctx)
    return torch.randint(0, model.cfg.d_vocab, shape, generator=generator)


def fitted_sae(model, hook_name, d_sae=128, firing_rate=0.1, seed=0):
    """A real sae_lens StandardSAE whose biases are set so each feature fires on about
    ``firing_rate`` of the model's tokens at ``hook_name`` (so the audit has sparse,
    non-trivial features)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae)
    config.metadata.hook_name = hook_name
    torch.manual_seed(seed)
    sae = StandardSAE(config)
    _, cache = model.run_with_cache(random_tokens(model, seed=99), names_filter=hook_name)
    acts = cache[hook_name].reshape(-1, model.cfg.d_model)
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / model.cfg.d_model**0.5)
        pre = (acts - sae.b_dec) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre, 1 - firing_rate, dim=0))
    return sae.eval()


def exact_sae(d_in: int, hook_name: str):
    """An SAE that reconstructs exactly: features relu(x), relu(-x); decode adds them back.
    Its squared error is the sum of the removed features' f_i^2, so pruning more of them
    (the removed sets are nested) can only lower the explained variance."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in)
    config.metadata.hook_name = hook_name
    sae = StandardSAE(config)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def char_tokenizer(size=128):
    """A character-level fast tokenizer with ``size`` ids (special tokens 0..3)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = [chr(c) for c in range(32, 32 + size - len(specials))]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def randomize(model, seed):
    """Spread every parameter (HF's init is tiny; norms start at 0/1) so that a wrong
    mapping or a rounding slip shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def save_checkpoint(architecture: str, config_class: str, settings: dict, folder):
    """A tiny randomized ``architecture`` (``transformers.<config_class>(**settings)``,
    eager attention) saved to ``folder`` with a character tokenizer; returns the model."""
    import transformers

    config = getattr(transformers, config_class)(**settings, architectures=[architecture])
    # eager attention: transformers' sdpa path (5.17) skips Gemma's attention soft-capping
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = randomize(getattr(transformers, architecture)(config), seed=4)
    model.save_pretrained(folder)
    char_tokenizer(128).save_pretrained(folder)
    return model


# Gemma-3 4B-27B's multimodal layout: a text decoder (local + global attention) and a vision tower
GEMMA3_TEXT = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=64,
    sliding_window=8,
    layer_types=["sliding_attention", "full_attention"],
    query_pre_attn_scalar=16,
    rope_parameters={  # as Gemma-3 4B-27B: linear scaling on the global layers
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
)
GEMMA3_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
)


def save_gemma3_multimodal(folder):
    """A tiny Gemma3ForConditionalGeneration (text decoder + vision tower) saved to ``folder``."""
    settings = dict(text_config=GEMMA3_TEXT, vision_config=GEMMA3_VISION, image_token_index=127)
    settings.update(mm_tokens_per_image=4, boi_token_index=125, eoi_token_index=126)
    return save_checkpoint("Gemma3ForConditionalGeneration", "Gemma3Config", settings, folder)


def hf_neox(vocab_size=128, **overrides):
    """A tiny randomized GPTNeoXForCausalLM (Pythia's architecture), in memory."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    settings = dict(
        vocab_size=vocab_size,
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
        architectures=["GPTNeoXForCausalLM"],
    )
    settings.update(overrides)
    torch.manual_seed(0)
    return randomize(GPTNeoXForCausalLM(GPTNeoXConfig(**settings)), seed=1)


def save_neox(folder, vocab_size=128, tokenizer=None, **overrides):
    model = hf_neox(vocab_size, **overrides)
    model.save_pretrained(folder)
    (tokenizer or char_tokenizer(vocab_size)).save_pretrained(folder)
    return model


def hf_gemma2():
    """A tiny randomized Gemma2ForCausalLM (grouped-query and local attention), in memory."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=64,
        sliding_window=8,  # shorter than the test sequences: local attention is exercised
        query_pre_attn_scalar=16,
        architectures=["Gemma2ForCausalLM"],
    )
    torch.manual_seed(0)
    # eager attention: transformers' sdpa path (5.17) skips Gemma-2's attention soft-capping
    config._attn_implementation = "eager"
    return randomize(Gemma2ForCausalLM(config), seed=2)


def save_gemma2(folder):
    model = hf_gemma2()
    model.save_pretrained(folder)
    char_tokenizer(128).save_pretrained(folder)
    return model


def hooked_config_of(hf_model):
    """The TransformerLens config of hf_neox() or hf_gemma2() (same widths and layers)."""
    config = hf_model.config
    gemma = type(hf_model).__name__ == "Gemma2ForCausalLM"
    d_head = config.head_dim if gemma else config.hidden_size // config.num_attention_heads
    shape = dict(
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        d_head=d_head,
        d_mlp=config.intermediate_size,
        d_vocab=config.vocab_size,
        n_ctx=config.max_position_embeddings,
    )
    if gemma:
        return gemma_like_config(**shape, rotary_dim=d_head)
    return neox_config(**shape, rotary_dim=d_head // 4)  # partial_rotary_factor 0.25


def save_llama_family(folder, architecture):
    """A Llama (GQA) or Mistral (no sliding window) checkpoint built from a config."""
    import transformers

    config_class = {"LlamaForCausalLM": "LlamaConfig", "MistralForCausalLM": "MistralConfig"}
    config = getattr(transformers, config_class[architecture])(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        architectures=[architecture],
        **({"sliding_window": None} if architecture == "MistralForCausalLM" else {}),
    )
    torch.manual_seed(0)
    model = randomize(getattr(transformers, architecture)(config), seed=3)
    model.save_pretrained(folder)
    char_tokenizer(128).save_pretrained(folder)
    return model


def sample_tokens(seed=0, shape=(2, 24)):
    return torch.randint(4, 128, shape, generator=torch.Generator().manual_seed(seed))


def rtn_numpy(weight, bits):
    """docs/definitions.md RTN of a [out, in] matrix, one scale per row, in float32 like the HF tensor."""
    w = weight.detach().numpy().astype(np.float32)
    qmax = np.float32(2 ** (bits - 1) - 1)
    scale = np.abs(w).max(axis=1, keepdims=True) / qmax
    safe = np.where(scale > 0, scale, np.float32(1))
    return np.clip(np.round(w / safe), -qmax, qmax) * scale


def round_linears(hf_model, bits):
    """The HF model with every block nn.Linear weight per-row RTN'd (not the unembedding)."""
    with torch.no_grad():
        for module in hf_model.modules():
            if (
                isinstance(module, torch.nn.Linear)
                and module is not hf_model.get_output_embeddings()
            ):
                module.weight.copy_(torch.from_numpy(rtn_numpy(module.weight, bits)))
    return hf_model.eval()


def heads_in(rows, n_heads):
    """HF [heads*d_head, d_model] -> TransformerLens [heads, d_model, d_head]."""
    return rows.reshape(n_heads, -1, rows.shape[1]).transpose(0, 2, 1)


def heads_out(rows, n_heads):
    """HF [d_model, heads*d_head] -> TransformerLens [heads, d_head, d_model]."""
    return rows.T.reshape(n_heads, -1, rows.shape[0])
