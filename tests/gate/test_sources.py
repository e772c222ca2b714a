"""A cache hit is found from the input files alone: nothing heavy is loaded."""

from __future__ import annotations

import shutil

from pytest_qdm.gate.sources import sources_key
from pytest_qdm.options_parse import build_options
from pytest_qdm.zoo import weights_dir


def options(**raw):
    return build_options({"model": "tiny", "bits": "8,4", "match-bits": 4, **raw})


def test_the_sources_key_follows_what_changes_the_result(tmp_path):
    base = sources_key(options())
    assert base is not None and base == sources_key(options())
    # judging and presentation do not change the result
    assert sources_key(options(**{"min-survived": ["int8:0.9"], "no-plots": True})) == base
    assert sources_key(options(tokens=4096)) != base
    assert sources_key(options(bits="8,6,4")) != base
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text " * 100)
    with_file = sources_key(options(dataset=str(corpus)))
    corpus.write_text("other text " * 100)
    assert sources_key(options(dataset=str(corpus))) != with_file
    # a local model folder is digested by its files; editing a weight changes the key
    folder = tmp_path / "model"
    shutil.copytree(weights_dir(), folder)
    local = options(model=str(folder), sae=str(folder / "sae_blocks.4.hook_resid_post"))
    before = sources_key(local)
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert sources_key(local) != before


def test_hub_sources_take_the_full_fingerprint():
    assert sources_key(options(model="org/some-model", sae="release/sae-id")) is None
    assert sources_key(options(dataset="hf:wikitext:wikitext-2-raw-v1:test")) is None
