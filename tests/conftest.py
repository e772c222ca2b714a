"""Shared fixtures: tiny models built from a config and real sae_lens SAEs fitted to them.

Nothing here touches the network (HF_HUB_OFFLINE is set before any Hub library loads).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture(scope="session")
def neox_model():
    return build_model(neox_config())


@pytest.fixture(scope="session")
def neox_sae(neox_model):
    return fitted_sae(neox_model, "blocks.1.hook_resid_post")


@pytest.fixture(scope="session")
def neox_tokens(neox_model):
    return random_tokens(neox_model)


@pytest.fixture(scope="session")
def gemma_like_model():
    return build_model(gemma_like_config())


@pytest.fixture
def shared_data():
    """../shared/data beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only on the dev machines)")
    return SHARED_DATA


def pytest_configure(config):
    # One torch thread per xdist worker: two workers with two threads each oversubscribe a
    # 2-core machine and make small forwards many times slower. Only for the suite's own
    # workers, so a gate run from the repository root keeps every core.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


# ---------------------------------------------------------- the bundled model, shared


def needs(module: str, extra: str):
    """Import a format's library, or skip with the pip command that installs it."""
    return pytest.importorskip(module, reason=f"pip install 'pytest-qdm[{extra}]'")


@pytest.fixture(scope="session")
def reference():
    """The bundled model (the reference the shipped-checkpoint tests audit against)."""
    from pytest_qdm.zoo import load_tiny_model

    return load_tiny_model(device="cpu")


@pytest.fixture(scope="session")
def sae():
    from pytest_qdm.zoo import load_tiny_sae

    return load_tiny_sae(device="cpu")


@pytest.fixture(scope="session")
def tokens(reference):
    """2,048 tokens of the builtin corpus, as [16, 128] rows."""
    from pytest_qdm.load.tokens import load_tokens

    return load_tokens(
        "builtin", reference.tokenizer, context_length=128, max_tokens=2048, prepend_bos=True
    ).tokens


@pytest.fixture(scope="session")
def tiny_report(reference, sae):
    """One real protocol report of the bundled model on 8 random rows (tests/reliability)."""
    import torch

    import pytest_qdm as qdm
    from pytest_qdm.settings import ProtocolConfig

    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(reference.cfg.d_vocab, (8, 64), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return qdm.run_protocol(
            *(reference, sae, rows),
            bits=(8,),
            match_bits=None,
            config=qdm.AuditConfig(progress=False),
            protocol=ProtocolConfig(n_shards=2, n_bootstrap=0, ppl_tokens=128, sae_transfer=False),
        )
    finally:
        torch.set_num_threads(threads)
