"""Benchmark workloads: model, SAE and tokens of realistic shape (random weights).

Workload P: a Pythia-70M-shaped HookedTransformer read out at ``blocks.4.hook_resid_post``
with a 512 -> 32768 StandardSAE. Workload G: a Gemma-2-2B-shaped model read out at layer 12
with a 2304 -> 16384 JumpReLUSAE. Weights are random (no checkpoints on these machines);
shapes set the cost. SAE biases/thresholds are calibrated per feature so that each feature
fires on ``firing`` of the calibration tokens (real SAEs: L0 ~ 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZER = SHARED / "tokenizers" / "gpt-neox-20b-tokenizer.json"
WIKITEXT = SHARED / "wikitext-2-raw" / "wiki.test.txt"


@dataclass
class Workload:
    name: str
    model: object  # HookedTransformer
    sae: object  # sae_lens SAE
    hook: str
    tokens: torch.Tensor  # [n, ctx] audit tokens
    token_source: str


def pythia_70m_config(n_ctx: int, device: str = "cpu"):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=6,
        d_model=512,
        n_heads=8,
        d_head=64,
        d_mlp=2048,
        d_vocab=50304,
        n_ctx=max(n_ctx, 2048),
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=16,  # rotary_pct 0.25 of d_head 64
        rotary_adjacent_pairs=False,  # GPT-NeoX style
        parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
        device=device,
        seed=0,
    )


def gemma_2_2b_config(n_ctx: int, device: str, dtype: torch.dtype, **overrides):
    from transformer_lens import HookedTransformerConfig

    settings = dict(
        n_layers=26,
        d_model=2304,
        n_heads=8,
        n_key_value_heads=4,
        d_head=256,
        d_mlp=9216,
        d_vocab=256000,
        n_ctx=max(n_ctx, 8192),
        act_fn="gelu_pytorch_tanh",
        gated_mlp=True,
        normalization_type="RMS",
        use_normalization_before_and_after=True,
        positional_embedding_type="rotary",
        rotary_dim=256,
        rotary_base=10000,
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        original_architecture="Gemma2ForCausalLM",
        device=device,
        dtype=dtype,
        seed=0,
    )
    return HookedTransformerConfig(**{**settings, **overrides})


def corpus_tokens(n_tokens: int, ctx: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n_tokens`` (rounded up to whole rows of ``ctx``) of WikiText-2 test text under the
    GPT-NeoX tokenizer, wrapping around the corpus; synthetic ids where the data is absent."""
    rows = -(-n_tokens // ctx)
    if TOKENIZER.is_file() and WIKITEXT.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(TOKENIZER)).encode(WIKITEXT.read_text()).ids
        ids = torch.tensor(ids, dtype=torch.long) % vocab
        reps = -(-rows * ctx // ids.numel())
        source = f"WikiText-2 test, GPT-NeoX tokenizer ({ids.numel()} tokens)"
        return ids.repeat(reps)[: rows * ctx].reshape(rows, ctx), source
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, ctx), generator=generator)
    return ids, f"synthetic uniform ids (shared data absent: {SHARED})"


@torch.no_grad()
def calibrate_encoder(model, sae, hook: str, tokens: torch.Tensor, firing: float, jumprelu: bool):
    """Set b_enc (StandardSAE) or the threshold (JumpReLU) per feature so that each feature
    fires on ``firing`` of the calibration tokens."""
    _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=_stop(hook))
    acts = cache[hook].reshape(-1, sae.cfg.d_in).to(sae.dtype)
    pre = (acts - sae.b_dec) @ sae.W_enc
    k = max(1, round(firing * pre.shape[0]))
    # the (k+1)-th largest pre-activation per feature: exactly k tokens exceed it
    cut = torch.topk(pre.float(), k + 1, dim=0).values[-1]
    if jumprelu:
        sae.b_enc.zero_()
        sae.threshold.copy_(cut.clamp_min(1e-3).to(sae.dtype))
    else:
        sae.b_enc.copy_((-cut).to(sae.dtype))


def _stop(hook: str) -> int:
    return int(hook.split(".")[1]) + 1


@torch.no_grad()
def _scale_weights(model, std: float) -> None:
    """Realistic-scale random weights (TL's init is tiny): normal(0, std) for matrices."""
    generator = torch.Generator(device=model.cfg.device).manual_seed(0)
    for param in model.parameters():
        if param.ndim >= 2:
            param.normal_(0, std, generator=generator)


def workload_p(n_tokens: int, ctx: int = 512, firing: float = 0.003) -> Workload:
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer

    torch.manual_seed(0)
    model = HookedTransformer(pythia_70m_config(ctx)).eval()
    _scale_weights(model, 0.02)
    hook = "blocks.4.hook_resid_post"
    config = StandardSAEConfig(d_in=512, d_sae=32768)
    config.metadata.hook_name = hook
    sae = StandardSAE(config).eval()
    with torch.no_grad():
        sae.W_enc.normal_(0, 512**-0.5)
    tokens, source = corpus_tokens(n_tokens + 8 * ctx, ctx, model.cfg.d_vocab)
    calibration, audit_tokens = tokens[-8:], tokens[:-8]  # the last 8 rows calibrate
    calibrate_encoder(model, sae, hook, calibration, firing, jumprelu=False)
    return Workload("P", model, sae, hook, audit_tokens, source)


def workload_g(
    n_tokens: int,
    ctx: int = 1024,
    firing: float = 0.005,
    device: str = "cuda",
    d_sae: int = 16384,
    **shape,
) -> Workload:
    """``shape`` overrides the model config (only to smoke-test this code at a small size)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from transformer_lens import HookedTransformer

    dtype = torch.bfloat16
    torch.manual_seed(0)
    model = HookedTransformer(gemma_2_2b_config(ctx, device, dtype, **shape)).eval()
    _scale_weights(model, 0.02)
    hook = f"blocks.{model.cfg.n_layers // 2 - 1}.hook_resid_post"  # layer 12 of 26
    d_model = model.cfg.d_model
    config = JumpReLUSAEConfig(d_in=d_model, d_sae=d_sae, dtype="bfloat16", device=device)
    config.metadata.hook_name = hook
    sae = JumpReLUSAE(config).eval()
    with torch.no_grad():
        sae.W_enc.normal_(0, d_model**-0.5)
    tokens, source = corpus_tokens(n_tokens + 4 * ctx, ctx, model.cfg.d_vocab)
    calibrate_encoder(model, sae, hook, tokens[-4:].to(device), firing, jumprelu=True)
    return Workload("G", model, sae, hook, tokens[:-4], source)
