"""The bundled qdm-tiny model, tokenizer and SAEs: offline loading and measured quality.

Quality numbers are computed here on held-out built-in tokens, not read from the training
report, so a broken checkpoint or a changed corpus is caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")

from pytest_qdm import zoo
from pytest_qdm.load import corpus
from pytest_qdm.load import tokens as data

N_HELDOUT_ROWS = 160  # x 128 tokens = 20,480 held-out tokens


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.load_tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return zoo.load_tiny_model()


@pytest.fixture(scope="module")
def saes():
    return zoo.load_tiny_saes()


@pytest.fixture(scope="module")
def heldout(tokenizer):
    ts = data.load_tokens(
        "builtin",
        tokenizer,
        context_length=zoo.TINY_CONTEXT_LENGTH,
        max_tokens=N_HELDOUT_ROWS * zoo.TINY_CONTEXT_LENGTH,
        prepend_bos=True,
        seed=0,
        split="heldout",
    )
    return ts.tokens


@pytest.fixture(scope="module")
def heldout_acts(model, heldout):
    layers = [int(h.split(".")[1]) for h in zoo.TINY_HOOKS]
    out = {h: [] for h in zoo.TINY_HOOKS}
    with torch.no_grad():
        for batch in heldout.split(32):
            _, cache = model.run_with_cache(
                batch, names_filter=lambda n: n in out, stop_at_layer=max(layers) + 1
            )
            for h in out:
                out[h].append(cache[h].reshape(-1, model.cfg.d_model))
    return {h: torch.cat(v) for h, v in out.items()}


def test_import_is_light():
    code = "import sys, pytest_qdm.zoo; print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_files_are_small():
    files = [p for p in zoo.weights_dir().rglob("*") if p.is_file()]
    names = {p.relative_to(zoo.weights_dir()).as_posix() for p in files}
    for hook in zoo.TINY_HOOKS:
        assert f"sae_{hook}/sae_weights.safetensors" in names
        assert f"sae_{hook}/cfg.json" in names
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert sum(p.stat().st_size for p in files) < 25 * 2**20


def test_tokenizer_round_trip(tokenizer):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 0
    assert tokenizer.pad_token_id == 1
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|padding|>"]
    assert len(tokenizer) == 4096
    text = "The quick brown fox.\nfor x in range(10):\n    print(x)  # café ünïcode"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert 0 not in ids and 1 not in ids
    assert tokenizer.decode(ids) == text
    assert len(ids) < 0.6 * len(text)  # BPE merges common English and Python


def test_model_is_a_llama_checkpoint_as_stored(model):
    """A Hugging Face LlamaForCausalLM folder; the HookedTransformer computes what
    transformers computes from it, with the norms' stored gains (no folding)."""
    from transformers import AutoModelForCausalLM

    cfg = model.cfg
    assert cfg.model_name == zoo.TINY_MODEL_NAME
    assert cfg.original_architecture == "LlamaForCausalLM"
    assert cfg.n_layers >= 6 and cfg.n_ctx == zoo.TINY_CONTEXT_LENGTH
    assert cfg.normalization_type == "RMS" and cfg.gated_mlp and cfg.act_fn == "silu"
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_dim == cfg.d_head
    assert not model.training
    assert model.tokenizer is not None and model.tokenizer.bos_token_id == 0
    hf = AutoModelForCausalLM.from_pretrained(zoo.weights_dir(), local_files_only=True).eval()
    assert not hf.config.tie_word_embeddings
    assert torch.equal(model.blocks[0].ln1.w, hf.model.layers[0].input_layernorm.weight)
    tokens = model.to_tokens("The return statement")
    assert tokens[0, 0].item() == 0 and tokens.shape[1] > 2
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4


def test_model_beats_unigram_on_heldout(model, tokenizer, heldout):
    with torch.no_grad():
        losses = [model(b, return_type="loss", loss_per_token=True) for b in heldout.split(32)]
    heldout_loss = float(torch.cat([x.flatten() for x in losses]).mean())
    train_ids = torch.tensor(data.encode_text(tokenizer, corpus.builtin_corpus("train").text))
    counts = torch.bincount(train_ids, minlength=len(tokenizer)).double() + 1.0
    logp = counts.log() - counts.sum().log()
    unigram = float(-logp[heldout[:, 1:].flatten()].mean())
    print(f"held-out loss {heldout_loss:.3f} nats/token, unigram {unigram:.3f}")
    assert unigram - heldout_loss >= 1.5, (heldout_loss, unigram)


@pytest.mark.parametrize("hook", zoo.TINY_HOOKS)
def test_sae_quality_on_heldout(hook, saes, heldout_acts):
    sae = saes[hook]
    meta = sae.cfg.metadata
    assert meta.hook_name == hook and meta.model_name == zoo.TINY_MODEL_NAME
    assert meta.prepend_bos is True and meta.context_size == zoo.TINY_CONTEXT_LENGTH
    assert data.prepend_bos_from_sae(sae, default=False) is True
    x = heldout_acts[hook]
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    ev = 1 - float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    l0 = float((f > 0).sum(-1).float().mean())
    dead = float(((f > 0).sum(0) == 0).float().mean())
    print(f"{hook}: EV {ev:.3f} L0 {l0:.1f} dead {dead:.3f}")
    assert ev >= 0.8
    assert 10 <= l0 <= 64
    assert dead < 0.2
    assert float((f > 0).float().mean()) < 0.1  # sparse


def test_sae_loads_with_plain_sae_lens(saes):
    from sae_lens import SAE

    for hook, sae in saes.items():
        again = SAE.load_from_disk(zoo.sae_dir(hook))
        assert torch.equal(again.W_enc, sae.W_enc)
        cfg = json.loads((zoo.sae_dir(hook) / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == hook
    with pytest.raises(ValueError, match="no bundled qdm-tiny SAE"):
        zoo.load_tiny_sae("blocks.0.hook_resid_pre")
