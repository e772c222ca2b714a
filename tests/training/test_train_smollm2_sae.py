"""training/train_smollm2_sae.py reads the activation its SAE is shipped for: the residual
stream after block L as TransformerLens' ``blocks.L.hook_resid_post`` gives it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.factories import sample_tokens, save_llama_family

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))
train_smollm2_sae = pytest.importorskip("train_smollm2_sae")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return folder, save_llama_family(folder, "LlamaForCausalLM").eval()


def test_residual_after_is_transformer_lens_resid_post(llama):
    from pytest_qdm.load.models import load_model_from_disk

    folder, hf = llama
    ids = sample_tokens()
    lens = load_model_from_disk(folder, device="cpu")
    _, cache = lens.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    hf.model.layers = hf.model.layers[:1]  # cut after the read-out block, as the script does
    ours = train_smollm2_sae.residual_after(hf, ids, 0)
    torch.testing.assert_close(ours, cache["blocks.0.hook_resid_post"], rtol=1e-4, atol=1e-4)
    # the pitfall it replaces: hidden_states[-1] of a cut model is the final norm's output
    with torch.no_grad():
        last = hf.model(ids, output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(last, ours, atol=1e-2)
