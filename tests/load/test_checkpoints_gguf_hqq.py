"""GGUF (llama.cpp Q8_0 / Q4_0) and HQQ checkpoints of the bundled model, written by the
formats' own libraries, loaded back through the plugin and audited against the reference.

The GGUF file is written as llama.cpp's convert_hf_to_gguf.py writes a Llama model
(tests/helpers/gguf_writer.py); the HQQ folder by hqq's ``AutoHQQHFModel.save_quantized``. A test
whose library is missing skips with the pip command.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load.checkpoints import inspect_checkpoint
from pytest_qdm.load.formats import MissingFormatLibrary
from pytest_qdm.zoo import weights_dir
from tests.helpers.libraries import needs

HF_LINEARS = {
    "attn.W_Q": "self_attn.q_proj",
    "attn.W_K": "self_attn.k_proj",
    "attn.W_V": "self_attn.v_proj",
    "attn.W_O": "self_attn.o_proj",
    "mlp.W_gate": "mlp.gate_proj",
    "mlp.W_in": "mlp.up_proj",
    "mlp.W_out": "mlp.down_proj",
}


def hf_name(name: str) -> str:
    """A TransformerLens block weight's Hugging Face parameter name."""
    block, kind = re.fullmatch(r"blocks\.(\d+)\.(.+)", name).groups()
    return f"model.layers.{block}.{HF_LINEARS[kind]}.weight"


def survival(result, name: str) -> float:
    return result.conditions[name].summary.survived_pct


@pytest.fixture(scope="module")
def shipped_audit(reference, sae, tokens, request):
    """One audit (one reference pass) of RTN(8), RTN(4) and every shipped candidate whose
    library is installed."""
    conditions = [qdm.RTN(8), qdm.RTN(4)]
    if importlib.util.find_spec("gguf"):
        conditions += [candidate for _, candidate in request.getfixturevalue("ggufs").values()]
    if importlib.util.find_spec("hqq"):
        conditions.append(request.getfixturevalue("hqq_shipped")[0])
    return qdm.audit(reference, sae, tokens, conditions, qdm.AuditConfig(progress=False))


# ---------------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Q8_0 and Q4_0 files of the bundled model: (file, candidate loaded from it) by type."""
    gguf = needs("gguf", "gguf")
    from tests.helpers.gguf_writer import write_llama_gguf

    root = tmp_path_factory.mktemp("gguf")
    shipped = {}
    for qtype in ("Q8_0", "Q4_0"):
        file = root / f"tiny.{qtype}.gguf"
        write_llama_gguf(weights_dir(), file, gguf.GGMLQuantizationType[qtype])
        shipped[qtype] = (file, qdm.Candidate.from_pretrained(str(file), device="cpu"))
    return shipped


def test_gguf_candidates_are_named_and_flagged(ggufs):
    for qtype, (_, candidate) in ggufs.items():
        assert candidate.name == f"candidate:tiny-{qtype.lower()}"
        assert candidate.checkpoint.quant_method == "gguf"
        assert candidate.checkpoint.scheme == qtype
        assert candidate.checkpoint.activations_quantized  # llama.cpp's q8 activations


def test_gguf_weights_are_ggufs_own_dequantize(reference, ggufs):
    import gguf

    from tests.helpers.gguf_writer import gguf_layout

    config = json.loads((weights_dir() / "config.json").read_text())
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    for file, candidate in ggufs.values():
        stored = {tensor.name: tensor for tensor in gguf.GGUFReader(str(file)).tensors}
        ours = dict(candidate.model.named_parameters())
        for name, target in target_weights(reference).items():
            tensor = stored[name_map.get_name(hf_name(name), try_suffixes=(".weight",))]
            written = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            expected = torch.from_numpy(gguf_layout(hf_name(name), written, config, inverse=True))
            assert torch.equal(target.to_rows(ours[name].data), expected), name
        # norms and (un)embedding are written in F32: the reference's own numbers
        assert torch.equal(ours["embed.W_E"], reference.embed.W_E)
        assert torch.equal(ours["unembed.W_U"], reference.unembed.W_U)


def test_gguf_q8_0_is_within_a_grid_step_of_simulated_rtn8(reference, ggufs, shipped_audit):
    _, q8 = ggufs["Q8_0"]
    ours = dict(q8.model.named_parameters())
    for name, rtn8 in qdm.RTN(8).compressed_weights(reference).items():
        original = target_weights(reference)[name].param.data
        top = original.abs().max()
        # Q8_0 rounds 32-weight blocks to max|w| / 127 steps, the scale stored in fp16: error
        # <= (0.5 + 127 * 2^-11) / 127 = 0.0044 of max|w| (measured 0.0040; RTN(8)'s per-row
        # grid 0.0039); the two grids then differ by at most the sum (measured 0.0079)
        assert float((ours[name].data - original).abs().max() / top) < 0.0045, name
        assert float((ours[name].data - rtn8).abs().max() / top) < 0.0085, name
    # measured on 2,048 tokens: Q8_0 95.7 % vs RTN(8) 96.1 % (two of ~450 active features)
    assert abs(survival(shipped_audit, "rtn-int8") - survival(shipped_audit, q8.name)) < 2


def test_gguf_q4_0_survives_less_than_q8_0(ggufs, shipped_audit):
    q8, q4 = ggufs["Q8_0"][1].name, ggufs["Q4_0"][1].name
    # measured: Q4_0 65.4 %, Q8_0 95.7 % (per-channel RTN(4) keeps 55.3 %)
    assert survival(shipped_audit, q4) < survival(shipped_audit, q8) - 20


# ----------------------------------------------------------------------------------- HQQ


@pytest.fixture(scope="module")
def hqq_shipped(tmp_path_factory):
    """The bundled model quantized by hqq (4-bit, group 64) and saved with its
    save_quantized, loaded back as a candidate; with hqq's own dequantized weights by HF
    name (taken before saving)."""
    needs("hqq", "hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("hqq") / "tiny-hqq-w4-g64"
    model = AutoModelForCausalLM.from_pretrained(weights_dir(), dtype=torch.float32)
    AutoHQQHFModel.quantize_model(
        model,
        quant_config=BaseQuantizeConfig(nbits=4, group_size=64),
        compute_dtype=torch.float32,
        device="cpu",
    )
    dequantized = {
        f"{name}.weight": module.dequantize()
        for name, module in model.named_modules()
        if isinstance(module, HQQLinear)
    }
    folder.mkdir()
    AutoHQQHFModel.save_quantized(model, str(folder))
    AutoTokenizer.from_pretrained(weights_dir()).save_pretrained(folder)
    return qdm.Candidate.from_pretrained(str(folder), device="cpu"), dequantized


def test_hqq_loads_as_hqqs_own_dequantize(reference, hqq_shipped):
    candidate, dequantized = hqq_shipped
    assert candidate.name == "candidate:tiny-hqq-w4-g64"
    assert candidate.checkpoint.quant_method == "hqq"
    assert candidate.checkpoint.scheme == "W4 group 64"
    assert not candidate.checkpoint.activations_quantized
    ours = dict(candidate.model.named_parameters())
    for name, target in target_weights(reference).items():
        assert torch.equal(target.to_rows(ours[name].data), dequantized[hf_name(name)]), name


def test_hqq_w4_g64_keeps_more_features_than_per_channel_rtn4(hqq_shipped, shipped_audit):
    # measured on 2,048 tokens: HQQ 64.8 % of features survive, per-channel RTN(4) 55.3 %,
    # RTN(4) with HQQ's group of 64 59.4 %: groups and the optimised zero-point both help
    hqq = hqq_shipped[0].name
    assert survival(shipped_audit, hqq) > survival(shipped_audit, "rtn-int4") + 5


def test_hqq_refusals_name_the_fix(tmp_path, monkeypatch):
    folder = tmp_path / "tiny-hqq"
    folder.mkdir()
    config = json.loads((weights_dir() / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "qmodel.pt").write_bytes(b"")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingFormatLibrary, match=r"pip install 'pytest-qdm\[hqq\]'"):
        inspect_checkpoint(folder)
    monkeypatch.undo()
    # transformers' HqqConfig layout (quant_method in config.json): transformers 5 refuses it
    config["quantization_config"] = {"quant_method": "hqq"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="AutoHQQHFModel.save_quantized"):
        inspect_checkpoint(folder)
