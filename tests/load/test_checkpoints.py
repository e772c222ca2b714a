"""Shipped checkpoints, made by the real quantization libraries from the bundled model's
Hugging Face weights, loaded back through the plugin and audited against the reference.

Each library is an extra (pytest-qdm[formats]); a test whose library is missing skips
with the pip command.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.compress.schemes import NF4
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.load.checkpoints import candidate_name, inspect_checkpoint
from pytest_qdm.load.formats import MissingFormatLibrary
from pytest_qdm.zoo import weights_dir
from tests.helpers.libraries import needs

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A folder maker: the bundled model quantized by a library and saved in its format."""
    root = tmp_path_factory.mktemp("shipped")

    def make(name: str, quantize) -> str:
        folder = root / name
        if not folder.exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = quantize(AutoModelForCausalLM, str(weights_dir()))
            model.save_pretrained(folder)
            AutoTokenizer.from_pretrained(weights_dir()).save_pretrained(folder)
        return str(folder)

    return make


def bnb_folder(shipped, name: str, **settings) -> str:
    needs("bitsandbytes", "bnb")
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(**settings)
    return shipped(
        name,
        lambda auto, src: auto.from_pretrained(
            src, quantization_config=config, dtype=torch.float32, device_map="cpu"
        ),
    )


def nf4_folder(shipped, double_quant: bool = False) -> str:
    return bnb_folder(
        shipped,
        "tiny-nf4-dq" if double_quant else "tiny-nf4",
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32,
    )


def llmcompressor_folder(shipped, name: str, modifier, calibrate=None) -> str:
    needs("llmcompressor", "llmcompressor")
    from llmcompressor import oneshot

    def quantize(auto, src):
        model = auto.from_pretrained(src, dtype=torch.float32)
        oneshot(model=model, recipe=modifier, **(calibrate or {}))
        return model

    return shipped(name, quantize)


def rtn_w4a16(shipped) -> str:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    return llmcompressor_folder(shipped, "tiny-w4a16-rtn", modifier)


def survival(result, name: str) -> float:
    return result.conditions[name].summary.survived_pct


def audit(reference, sae, tokens, conditions):
    return qdm.audit(reference, sae, tokens, conditions, qdm.AuditConfig(progress=False))


def test_bnb_nf4_is_the_simulated_nf4_exactly(reference, sae, tokens, shipped):
    candidate = qdm.Candidate.from_pretrained(nf4_folder(shipped), device="cpu")
    assert candidate.name == "candidate:tiny-nf4"
    assert candidate.checkpoint.quant_method == "bitsandbytes"
    assert candidate.checkpoint.scheme == "nf4" and not candidate.checkpoint.activations_quantized
    simulated = NF4(64).compressed_weights(reference)
    shipped_weights = dict(candidate.model.named_parameters())
    for name, weight in simulated.items():
        assert torch.equal(shipped_weights[name].data, weight), name
    result = audit(reference, sae, tokens, [NF4(64), candidate])
    active = result.reference.active
    r_sim = result.conditions["nf4-b64"].correlation[active]
    r_real = result.conditions[candidate.name].correlation[active]
    assert np.array_equal(r_sim, r_real)
    assert survival(result, "nf4-b64") == survival(result, candidate.name) < 90


def test_bnb_double_quant_is_the_simulated_nf4_dq(reference, sae, tokens, shipped):
    candidate = qdm.Candidate.from_pretrained(nf4_folder(shipped, True), device="cpu")
    assert candidate.checkpoint.scheme == "nf4 double-quant"
    ours = dict(candidate.model.named_parameters())
    # the 4-bit codes are plain NF4's; only the 8-bit-stored block absmaxes differ. Our codes
    # follow bitsandbytes' reference kernel; its native CPU kernel picks the neighbouring
    # 8-bit code in near-ties, so a few block scales move by one code step
    same = total = 0
    for name, weight in NF4(64, double_quant=True).compressed_weights(reference).items():
        same += int((ours[name].data == weight).sum())
        total += weight.numel()
    assert same / total > 0.99
    result = audit(reference, sae, tokens, [NF4(64), NF4(64, double_quant=True), candidate])
    active = result.reference.active
    real = result.conditions[candidate.name].correlation[active]
    gap_dq = np.abs(result.conditions["nf4-dq-b64"].correlation[active] - real)
    gap_plain = np.abs(result.conditions["nf4-b64"].correlation[active] - real)
    # measured on 2,048 tokens: median |dr| 1.4e-5 (plain NF4: 3.7e-4), 90th pct 2.1e-4 (0.020)
    assert np.percentile(gap_dq, 90) < 1e-3 < np.percentile(gap_plain, 90)
    assert gap_dq.mean() < 0.2 * gap_plain.mean(), (gap_dq.mean(), gap_plain.mean())
    assert abs(survival(result, "nf4-dq-b64") - survival(result, candidate.name)) < 1


def test_simulated_double_quant_equals_bitsandbytes_reference_kernel():
    needs("bitsandbytes", "bnb")
    import bitsandbytes.functional as bnbf

    from pytest_qdm.compress.schemes import double_quantized, dynamic_map, nf4_rows

    assert torch.equal(dynamic_map(), bnbf.create_dynamic_map())
    torch.manual_seed(0)
    for rows, cols in [(96, 128), (130, 320)]:  # 192 absmaxes (one short block), 650 (three)
        w = torch.randn(rows, cols) * torch.rand(rows, 1)
        absmax = w.reshape(-1, 64).abs().amax(dim=-1)
        offset = absmax.mean()
        torch.ops.bitsandbytes.quantize_blockwise.default  # noqa: B018 (registered op)
        from bitsandbytes.backends.default import ops as reference_kernels  # noqa: F401

        code = bnbf.create_dynamic_map()
        q, scales = torch.ops.bitsandbytes.quantize_blockwise.default(absmax - offset, code, 256)
        restored = bnbf.dequantize_blockwise(q, absmax=scales, code=code, blocksize=256) + offset
        assert torch.allclose(double_quantized(absmax), restored, rtol=0, atol=1e-6)
        plain = nf4_rows(w, 64)
        assert not torch.equal(nf4_rows(w, 64, double_quant=True), plain)


def test_bnb_llm_int8_is_flagged_as_quantizing_activations(reference, sae, tokens, shipped):
    folder = bnb_folder(shipped, "tiny-llm-int8", load_in_8bit=True)
    # its own path is forward (tests/load/test_candidate.py); the dequantized weights alone
    # are within a grid step of per-row int8
    candidate = qdm.Candidate.from_pretrained(folder, device="cpu", path="dequantize")
    assert candidate.checkpoint.scheme == "llm-int8 threshold 6"
    assert candidate.checkpoint.activations_quantized  # the dense path is an approximation
    result = audit(reference, sae, tokens, [qdm.RTN(8), candidate])
    assert abs(survival(result, "rtn-int8") - survival(result, candidate.name)) < 2


def ct_int4(rows: torch.Tensor, group: int) -> torch.Tensor:
    """compressed-tensors' symmetric int4 (memoryless min-max observer), written out:
    scale = max|w| / 7.5 per group, q = clamp(round(w / scale), -8, 7)."""
    out_features, in_features = rows.shape
    grouped = rows.float().reshape(out_features, in_features // group, group)
    scale = grouped.abs().amax(dim=-1, keepdim=True) / 7.5
    q = torch.clamp(torch.round(grouped / scale), -8, 7)
    return (q * scale).reshape(out_features, in_features)


def test_llmcompressor_rtn_w4a16_against_its_formula_and_simulated_rtn(
    reference, sae, tokens, shipped
):
    candidate = qdm.Candidate.from_pretrained(rtn_w4a16(shipped), device="cpu")
    assert candidate.checkpoint.quant_method == "compressed-tensors"
    assert candidate.checkpoint.scheme == "int W4 group 128 (pack-quantized)"
    ours = dict(candidate.model.named_parameters())
    for name, target in target_weights(reference).items():
        expected = ct_int4(target.to_rows(), 128)
        got = target.to_rows(ours[name].data)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
    # qdm.RTN(4, group_size=128) uses the symmetric grid +-7 with scale max|w| / 7: a
    # different grid, so per-feature r differ, but the share of survivors agrees closely
    result = audit(reference, sae, tokens, [qdm.RTN(4, group_size=128), candidate])
    assert abs(survival(result, "rtn-int4-g128") - survival(result, candidate.name)) < 3


def test_llmcompressor_gptq_keeps_more_features_than_rtn(reference, sae, tokens, shipped):
    needs("llmcompressor", "llmcompressor")
    from datasets import Dataset
    from llmcompressor.modifiers.quantization import GPTQModifier

    rows = tokens[:16].tolist()
    calibration = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * 128] * 16})
    modifier = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    settings = {"dataset": calibration, "max_seq_length": 128, "num_calibration_samples": 16}
    gptq = qdm.Candidate.from_pretrained(
        llmcompressor_folder(shipped, "tiny-w4a16-gptq", modifier, settings), device="cpu"
    )
    rtn = qdm.Candidate.from_pretrained(rtn_w4a16(shipped), device="cpu")
    result = audit(reference, sae, tokens, [rtn, gptq])
    assert survival(result, gptq.name) > survival(result, rtn.name) + 10


def test_fp8_dynamic_is_flagged_as_quantizing_activations(shipped):
    needs("llmcompressor", "llmcompressor")
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])
    info = inspect_checkpoint(llmcompressor_folder(shipped, "tiny-fp8-dynamic", modifier))
    assert info.quant_method == "compressed-tensors" and info.activations_quantized
    assert info.scheme == "float W8 channel (float-quantized)"


def test_candidate_names_and_gate_expressions():
    from pytest_qdm.gate.thresholds import parse_baseline, parse_gate
    from pytest_qdm.gate.verdicts import named_checks

    assert candidate_name("/ckpt/Llama-3.1-8B W4A16/") == "candidate:llama-3-1-8b-w4a16"
    assert candidate_name("models/tiny.Q8_0.gguf") == "candidate:tiny-q8_0"
    every = parse_gate("min_survived", "candidate:0.8")
    one = parse_gate("min_survived", "candidate:tiny-nf4:60%")
    assert (every.condition, every.bound) == ("candidate", 80.0)
    assert (one.condition, one.bound) == ("candidate:tiny-nf4", 60.0)
    assert parse_baseline("candidate:tiny-nf4.survived:-2").condition == "candidate:tiny-nf4"
    names = [n for n, _, _ in named_checks((every, one), ["rtn-int6"], ["candidate:a"])]
    assert names == ["min_survived[candidate:a]", "min_survived[candidate:tiny-nf4]"]


def test_bad_candidates_are_refused_with_one_line(tmp_path, reference, monkeypatch):
    from pytest_qdm.gate.preflight import preflight
    from pytest_qdm.options_parse import build_options

    def refused(*candidates: str, **raw) -> str:
        options = build_options({"model": "tiny", "candidate": list(candidates), **raw})
        with pytest.raises(ValueError) as error:
            preflight(options)
        return str(error.value)

    assert "does not exist" in refused(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json and no .gguf file" in refused(str(empty))
    weird = tmp_path / "weird"
    shutil.copytree(weights_dir(), weird, ignore=shutil.ignore_patterns("sae_*"))
    config = json.loads((weird / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "exl3"}
    (weird / "config.json").write_text(json.dumps(config))
    assert "quant_method 'exl3' is not supported; supported: bitsandbytes" in refused(str(weird))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (weird / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert "pip install 'pytest-qdm[bnb]'" in refused(str(weird))
    monkeypatch.undo()
    twin = tmp_path / "b" / "weird"
    shutil.copytree(weird, twin)
    assert "would both be candidate:weird" in refused(str(weird), str(twin))
    gate = {"min-survived": ["candidate:other:0.5"]}
    assert "not a --qdm-candidate (candidates: none)" in refused(**gate)
    with pytest.raises(MissingFormatLibrary, match=r"pytest-qdm\[bnb\]"):
        monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
        inspect_checkpoint(weird)


def test_a_checkpoint_of_another_model_is_refused_before_any_forward(tmp_path, reference):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(weights_dir())
    config.num_hidden_layers = 2
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "shallow")
    candidate = qdm.Candidate.from_pretrained(str(tmp_path / "shallow"), device="cpu")
    assert candidate.checkpoint.quant_method == "none"
    with pytest.raises(ValueError, match="layer count 2 vs the reference's 6"):
        candidate.check_compatible(reference)


def test_torchao_int8_weight_only_loads_dequantized(reference, shipped):
    needs("torchao", "torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    config = TorchAoConfig(Int8WeightOnlyConfig())

    def quantize(auto, src):
        model = auto.from_pretrained(
            src, dtype=torch.float32, device_map="cpu", quantization_config=config
        )
        model.save_pretrained = lambda folder: type(model).save_pretrained(
            model, folder, safe_serialization=False
        )
        return model

    candidate = qdm.Candidate.from_pretrained(shipped("tiny-ao-int8", quantize), device="cpu")
    assert candidate.checkpoint.quant_method == "torchao"
    assert candidate.checkpoint.scheme == "Int8WeightOnlyConfig"
    ours = dict(candidate.model.named_parameters())
    # per-row int8 like qdm.RTN(8); torchao's grid (-128..127) moves a weight by < 1% of max
    for name, weight in qdm.RTN(8).compressed_weights(reference).items():
        assert 0 < float((ours[name].data - weight).abs().max() / weight.abs().max()) < 0.01
