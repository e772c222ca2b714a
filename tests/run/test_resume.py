"""A run that is killed part-way continues from its finished work with the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import pytest_qdm as qdm
from pytest_qdm.run.resume import Checkpoints
from pytest_qdm.settings import ProtocolConfig

N_TOKENS = 1024
SETTINGS = dict(bits=(8, 4), match_bits=None)


@pytest.fixture(scope="module")
def subject():
    from pytest_qdm.load.tokens import load_tokens
    from pytest_qdm.zoo import load_tiny_model, load_tiny_sae

    model = load_tiny_model(device="cpu")
    tokens = load_tokens(
        "builtin", model.tokenizer, context_length=128, max_tokens=N_TOKENS, prepend_bos=True
    )
    return model, load_tiny_sae(device="cpu"), tokens


def protocol(subject, **kwargs):
    model, sae, tokens = subject
    config = qdm.AuditConfig(progress=False)
    cfg = ProtocolConfig(n_shards=4, n_bootstrap=0, ppl_tokens=256, sae_transfer=False)
    return qdm.run_protocol(model, sae, tokens, config=config, protocol=cfg, **SETTINGS, **kwargs)


def numbers(report) -> dict:
    data = json.loads(report.model_dump_json())
    data.pop("elapsed_seconds")
    return data


@pytest.fixture(scope="module")
def uninterrupted(subject):
    return numbers(protocol(subject))


SCRIPT = """
import sys, pytest_qdm as qdm
from pytest_qdm.settings import ProtocolConfig
from pytest_qdm.load.tokens import load_tokens
from pytest_qdm.zoo import load_tiny_model, load_tiny_sae
import pytest_qdm.stream.passes as passes, time
real = passes.run_pass
def slow(*a, **k):
    out = real(*a, **k)
    time.sleep(1)  # room for the parent to kill between shards
    return out
passes.run_pass = slow
model = load_tiny_model(device="cpu")
tokens = load_tokens("builtin", model.tokenizer, context_length=128, max_tokens={n},
                     prepend_bos=True)
qdm.run_protocol(model, load_tiny_sae(device="cpu"), tokens, bits=(8, 4), match_bits=None,
                 config=qdm.AuditConfig(progress=False),
                 protocol=ProtocolConfig(n_shards=4, n_bootstrap=0, ppl_tokens=256, sae_transfer=False),
                 checkpoints=sys.argv[1])
"""


def test_a_killed_process_resumes_with_the_same_numbers(
    subject, uninterrupted, tmp_path, monkeypatch
):
    folder = tmp_path / "partial"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(n=N_TOKENS))
    process = subprocess.Popen([sys.executable, str(script), str(folder)])
    try:
        deadline = time.monotonic() + 300
        while not (folder / "shard0.safetensors").exists():
            assert process.poll() is None, "the run ended before it saved a shard"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.kill()  # SIGKILL: no cleanup runs
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    finished = Checkpoints(folder).load_shards()
    assert 1 <= len(finished) < 4
    assert Checkpoints(folder).load("perplexity") is not None
    import pytest_qdm.stream.passes as passes

    real, calls = passes.run_pass, []
    monkeypatch.setattr(passes, "run_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert numbers(protocol(subject, checkpoints=folder)) == uninterrupted
    assert len(calls) == 4 - len(finished)  # only the missing shards ran
    assert not folder.exists()  # cleared when the protocol finished
