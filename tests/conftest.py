"""Shared fixtures: tiny models built from a config (tests/helpers/factories.py) and real
sae_lens SAEs fitted to them; the bundled model, its SAE and tokens.

Nothing here touches the network (HF_HUB_OFFLINE is set before any Hub library loads).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.factories import (
    build_model,
    fitted_sae,
    gemma_like_config,
    neox_config,
    random_tokens,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
