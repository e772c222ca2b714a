"""A .gguf file as the reference model: dequantized by transformers once, cached as a
safetensors folder keyed by the file's sha256, loaded through the project's own loaders;
bad GGUF files refused in one line before any work.

The GGUF files are the bundled Llama model written as llama.cpp's converter writes it
(tests/helpers/gguf_writer.py), F32 (exact) or Q8_0.
"""

from __future__ import annotations

import pytest
import torch

from pytest_qdm.load import gguf as gguf_module
from pytest_qdm.load.gguf import dequantized_folder, read_gguf
from pytest_qdm.load.models import load_model
from pytest_qdm.zoo import weights_dir
from tests.helpers.libraries import needs


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    gguf = needs("gguf", "gguf")
    from tests.helpers.gguf_writer import write_llama_gguf

    file = tmp_path_factory.mktemp("gguf") / "tiny.F32.gguf"
    write_llama_gguf(weights_dir(), file, gguf.GGMLQuantizationType.F32)
    return file


def test_header_reads_architecture_widths_and_scheme(f32_gguf):
    header = read_gguf(f32_gguf)
    assert (header.architecture, header.scheme) == ("llama", "F32")
    assert header.d_model == 128 and header.n_layers == 6  # the bundled config's


def test_f32_gguf_reference_equals_the_original_model(f32_gguf, tmp_path, reference):
    model = load_model(f32_gguf, device="cpu", cache_dir=tmp_path)
    assert type(model).__name__ == "HookedTransformer"
    assert model.cfg.model_name == "tiny.F32"
    tokens = torch.randint(
        2, model.cfg.d_vocab, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), rtol=1e-4, atol=1e-4)


def test_second_load_reads_the_cache_keyed_by_sha256(f32_gguf, tmp_path, monkeypatch):
    first = dequantized_folder(f32_gguf, tmp_path)
    assert first.name == gguf_module.file_sha256(f32_gguf)
    assert {p.name for p in first.iterdir()} >= {"config.json", "model.safetensors", "gguf.json"}

    def no_second_dequantization(*args):
        raise AssertionError("dequantized again instead of reading the cache")

    monkeypatch.setattr(gguf_module, "_write_dequantized", no_second_dequantization)
    assert dequantized_folder(f32_gguf, tmp_path) == first
    load_model(f32_gguf, device="cpu", cache_dir=tmp_path)


def test_bridge_backend_loads_the_same_gguf(f32_gguf, tmp_path, reference):
    bridge = load_model(f32_gguf, device="cpu", cache_dir=tmp_path, backend="bridge")
    tokens = torch.arange(2, 34).reshape(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), reference(tokens), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ bad input


def test_non_gguf_file_named_gguf_is_refused_in_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file") as error:
        load_model(fake, device="cpu", cache_dir=tmp_path)
    assert "\n" not in str(error.value)


def test_truncated_gguf_is_refused_in_one_line(f32_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f32_gguf.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or damaged") as error:
        read_gguf(cut)
    assert "\n" not in str(error.value)


def test_architecture_transformers_cannot_dequantize_is_refused(tmp_path):
    gguf = needs("gguf", "gguf")
    file = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(file), "rwkv6")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'rwkv6' cannot be dequantized"):
        load_model(file, device="cpu", cache_dir=tmp_path)
