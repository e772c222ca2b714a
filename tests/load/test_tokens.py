"""Token sources: built-in corpus, chunking, BOS handling, files and (offline) HF datasets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")

from pytest_qdm.load import corpus
from pytest_qdm.load import tokens as data

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WIKITEXT_TEST = SHARED_DATA / "wikitext-2-raw" / "wiki.test.txt"
NEOX_TOKENIZER = SHARED_DATA / "tokenizers" / "gpt-neox-20b-tokenizer.json"


@pytest.fixture(scope="module")
def neox_tokenizer():
    if not NEOX_TOKENIZER.is_file():
        pytest.skip(f"shared GPT-NeoX tokenizer not found at {NEOX_TOKENIZER}")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(NEOX_TOKENIZER), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


# ----------------------------------------------------------------------------- built-in corpus


def test_builtin_corpus_is_deterministic():
    first = corpus.builtin_corpus("train")
    corpus.builtin_corpus.cache_clear()
    corpus._all_builtin_documents.cache_clear()
    second = corpus.builtin_corpus("train")
    assert first is not second
    assert first.sha256 == second.sha256
    assert first.text == second.text
    assert first.name == "builtin:train"
    assert len(first.text) > 400_000  # pydoc topics alone are ~465 kB


def test_builtin_splits_are_disjoint_and_heldout_is_about_a_tenth():
    train = corpus.builtin_documents("train")
    heldout = corpus.builtin_documents("heldout")
    assert {k for k, _ in train}.isdisjoint(k for k, _ in heldout)
    assert {t for _, t in train}.isdisjoint(t for _, t in heldout)
    assert 0.05 < len(heldout) / (len(train) + len(heldout)) < 0.15
    assert any(k.startswith("topic:") for k, _ in heldout)
    h = corpus.builtin_corpus("heldout")
    assert h.sha256 != corpus.builtin_corpus("train").sha256
    assert h.text.startswith(heldout[0][1])


def test_builtin_corpus_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.builtin_corpus("test")
    with pytest.raises(ValueError, match="'validation'"):
        corpus.read_corpus("builtin", split="validation")


# ----------------------------------------------------------------------------- chunking


def test_chunk_shapes_bos_and_ragged_tail():
    ids = torch.arange(10, 10 + 103)
    rows = data.chunk_tokens(ids, 11, bos_token_id=0)
    assert rows.dtype == torch.long
    assert rows.shape == (10, 11)  # 103 // 10 body tokens per row; 3-token tail dropped
    assert (rows[:, 0] == 0).all()
    assert rows[:, 1:].flatten().tolist() == list(range(10, 110))

    plain = data.chunk_tokens(ids, 11, bos_token_id=None)
    assert plain.shape == (9, 11)  # 103 // 11; 4-token tail dropped
    assert plain.flatten().tolist() == list(range(10, 109))
    assert not (plain == 0).any()


def test_chunk_accepts_lists_and_max_tokens():
    ids = list(range(1, 1001))
    rows = data.chunk_tokens(ids, 10, bos_token_id=None, max_tokens=95)
    assert rows.shape == (9, 10)
    assert rows.numel() <= 95
    assert data.chunk_tokens(ids, 10, bos_token_id=None, max_tokens=3).shape == (1, 10)


def test_seed_none_takes_first_rows_and_seeds_are_deterministic():
    ids = torch.arange(1, 1001)
    first = data.chunk_tokens(ids, 10, bos_token_id=None, max_tokens=50)
    assert torch.equal(first, ids[:50].reshape(5, 10))
    a = data.chunk_tokens(ids, 10, bos_token_id=0, max_tokens=50, seed=1)
    b = data.chunk_tokens(ids, 10, bos_token_id=0, max_tokens=50, seed=1)
    c = data.chunk_tokens(ids, 10, bos_token_id=0, max_tokens=50, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a[:, 0] == 0).all()
    starts = a[:, 1].tolist()
    assert starts == sorted(starts)  # subset kept in corpus order
    assert all((s - 1) % 9 == 0 for s in starts)  # whole rows of the same cut


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"context_length": 1, "bos_token_id": 0}, ValueError, "context_length must be >= 2"),
        ({"context_length": 8.0, "bos_token_id": 0}, TypeError, "context_length must be an int"),
        ({"context_length": 64, "bos_token_id": 0}, ValueError, "corpus too short: 20 tokens"),
        (
            {"context_length": 4, "bos_token_id": None, "max_tokens": 100},
            ValueError,
            "max_tokens=100 needs 25 rows",
        ),
        ({"context_length": 4, "bos_token_id": -1}, ValueError, "bos_token_id must be >= 0"),
        ({"context_length": 4, "bos_token_id": 0, "seed": "x"}, TypeError, "seed must be an int"),
    ],
)
def test_chunk_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.chunk_tokens(list(range(20)), **kwargs)


# ----------------------------------------------------------------------------- sources


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        corpus.read_corpus(str(missing))


def test_local_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("alpha beta\ngamma\n", encoding="utf-8")
    text = corpus.read_corpus(str(path), split="heldout")  # split is ignored for files
    assert text.text == "alpha beta\ngamma\n"
    assert len(text.sha256) == 64


def test_bad_source_type():
    with pytest.raises(TypeError, match="source must be"):
        corpus.read_corpus(3)  # type: ignore[arg-type]


def test_hf_dataset_offline_fails_fast_with_local_file_hint():
    start = time.perf_counter()
    with pytest.raises((RuntimeError, ValueError)) as info:
        corpus.read_corpus("wikitext:wikitext-2-raw-v1:test")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "wikitext" in message
    assert "local text file" in message
    with pytest.raises((RuntimeError, ValueError), match="local text file"):
        corpus.read_corpus("hf:wikitext:wikitext-2-raw-v1:test")


def test_prepend_bos_without_bos_token_raises():
    class NoBos:
        bos_token_id = None

        def encode(self, text, add_special_tokens=False):
            return [1, 2, 3]

    with pytest.raises(ValueError, match="no bos_token_id"):
        data.load_tokens("builtin", NoBos(), context_length=8, prepend_bos=True)


def test_prepend_bos_from_sae():
    from types import SimpleNamespace

    from sae_lens.saes.sae import SAEMetadata

    def fake(**meta):
        return SimpleNamespace(cfg=SimpleNamespace(metadata=SAEMetadata(**meta)))

    assert data.prepend_bos_from_sae(fake(prepend_bos=False), default=True) is False
    assert data.prepend_bos_from_sae(fake(prepend_bos=True), default=False) is True
    assert data.prepend_bos_from_sae(fake(), default=True) is True
    assert data.prepend_bos_from_sae(fake(), default=False) is False
    with pytest.raises(TypeError, match="default must be a bool"):
        data.prepend_bos_from_sae(fake(), default=None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real files


def test_neox_tokenizer_known_ids(neox_tokenizer):
    ids = data.encode_text(neox_tokenizer, "Hello world, the quick brown fox")
    assert ids == [12092, 1533, 13, 253, 3158, 8516, 30013]


def test_wikitext_file_with_neox_tokenizer(neox_tokenizer):
    if not WIKITEXT_TEST.is_file():
        pytest.skip(f"shared WikiText-2-raw test split not found at {WIKITEXT_TEST}")
    ts = data.load_tokens(
        str(WIKITEXT_TEST),
        neox_tokenizer,
        context_length=128,
        max_tokens=128 * 16,
        prepend_bos=True,
        seed=0,
    )
    assert ts.tokens.shape == (16, 128)
    assert (ts.tokens[:, 0] == 0).all()
    assert (ts.tokens[:, 1:] != 0).any()
    info = ts.info
    assert info.n_sequences == 16 and info.context_length == 128 and info.n_tokens == 2048
    assert info.prepend_bos and info.bos_token_id == 0 and info.seed == 0
    assert info.split == "all"
    assert info.corpus_sha256 == "aca2f46735043bcfd0a44eca981d04627b9cdf74c4c9a04bf0856d04066f58fc"
    assert data.TokenInfo.model_validate_json(info.model_dump_json()) == info

    first = data.load_tokens(
        str(WIKITEXT_TEST), neox_tokenizer, context_length=16, max_tokens=32, prepend_bos=False
    )
    text = neox_tokenizer.decode(first.tokens[0].tolist())
    assert text.lstrip("\n").startswith(" = Robert Boulter = ")
    assert first.info.bos_token_id is None and not first.info.prepend_bos
