"""One real protocol report of the bundled tiny model on a few random rows, built in seconds."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_report():
    import torch

    import pytest_qdm as qdm
    from pytest_qdm.settings import ProtocolConfig
    from pytest_qdm.zoo import load_tiny_model, load_tiny_sae

    model = load_tiny_model(device="cpu")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.cfg.d_vocab, (8, 64), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return qdm.run_protocol(
            model,
            load_tiny_sae(device="cpu"),
            tokens,
            bits=(8,),
            match_bits=None,
            config=qdm.AuditConfig(progress=False),
            protocol=ProtocolConfig(n_shards=2, n_bootstrap=0, ppl_tokens=128, sae_transfer=False),
        )
    finally:
        torch.set_num_threads(threads)
