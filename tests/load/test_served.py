"""The served path: a .gguf run by llama.cpp (llama-cpp-python) on the CPU, read at the SAE's
hook through the scheduler's eval callback (``l_out-L`` = ``blocks.L.hook_resid_post``).

Pinned on the bundled Llama written as an F32 GGUF (tests/helpers/gguf_writer.py): llama.cpp's
residual stream, logits and per-token loss equal the PyTorch forward of the same weights to
float tolerance (its KV cache is float16, as served), and an audit of the served F32 file
against the reference finds the features it should: nearly all survive.
"""

from __future__ import annotations

import json

import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.gate.preflight import preflight
from pytest_qdm.load.served import ServedModel, tensor_name
from pytest_qdm.options import QdmOptions
from pytest_qdm.zoo import TINY_HOOK, weights_dir
from tests.helpers.libraries import needs


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    gguf = needs("gguf", "gguf")
    from tests.helpers.gguf_writer import write_llama_gguf

    file = tmp_path_factory.mktemp("served") / "tiny.F32.gguf"
    write_llama_gguf(weights_dir(), file, gguf.GGMLQuantizationType.F32)
    return file


@pytest.fixture(scope="module")
def served(f32_gguf):
    needs("llama_cpp", "llamacpp")
    return ServedModel(f32_gguf, threads=1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_hook_names_map_to_llama_cpp_tensors():
    assert tensor_name("blocks.15.hook_resid_post") == "l_out-15"
    with pytest.raises(ValueError, match="residual stream"):
        tensor_name("blocks.3.hook_mlp_out")


def test_served_activations_and_logits_equal_the_pytorch_forward(served, reference):
    tokens = torch.randint(2, 4000, (2, 40), generator=torch.Generator().manual_seed(1))
    hooks = [TINY_HOOK, "blocks.5.hook_resid_post"]  # a middle block and the last one
    got = {}
    logits = served.run_with_hooks(
        tokens, fwd_hooks=[(h, lambda a, hook: got.__setitem__(hook.name, a)) for h in hooks]
    )
    with torch.no_grad():
        want_logits, cache = reference.run_with_cache(tokens, names_filter=hooks)
    for hook in hooks:
        assert got[hook].shape == cache[hook].shape
        assert relative_error(got[hook], cache[hook]) < 2e-3, hook
    assert relative_error(logits, want_logits) < 2e-3
    loss = served(tokens, return_type="loss", loss_per_token=True)
    want_loss = reference(tokens, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(loss, want_loss, atol=5e-3, rtol=5e-3)


def test_served_hooks_cannot_patch(served):
    with pytest.raises(ValueError, match="cannot replace them"):
        served.run_with_hooks(
            torch.arange(2, 10)[None], fwd_hooks=[(TINY_HOOK, lambda a, hook: a * 0)]
        )


def test_audit_of_the_served_f32_file_is_near_the_null_condition(f32_gguf, reference, sae, tokens):
    needs("llama_cpp", "llamacpp")
    candidate = qdm.Candidate.from_pretrained(str(f32_gguf), path="served", device="cpu")
    assert candidate.forward and candidate.checkpoint.path == "served"
    result = qdm.audit(reference, sae, tokens[:8], [candidate], qdm.AuditConfig(progress=False))
    assert result.conditions[candidate.name].summary.survived_pct > 95


# ------------------------------------------------------------------------------ bad input


def test_served_path_for_a_non_gguf_candidate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="the served path runs a .gguf file") as error:
        preflight(
            QdmOptions(
                model="tiny",
                candidates=(str(weights_dir()),),
                candidate_path="served",
                report_dir=str(tmp_path),
            )
        )
    assert "\n" not in str(error.value)


def test_served_path_without_llama_cpp_names_the_extra(f32_gguf, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a),
    )
    options = dict(model="tiny", candidates=(str(f32_gguf),), candidate_path="served")
    with pytest.raises(ValueError, match=r"pip install 'pytest-qdm\[llamacpp\]'"):
        preflight(QdmOptions(**options, report_dir=str(tmp_path)))


def test_sae_whose_width_does_not_match_the_gguf_model_is_refused(f32_gguf, tmp_path):
    sae = tmp_path / "sae"
    sae.mkdir()
    config = {"d_in": 64, "d_sae": 256, "metadata": {"hook_name": TINY_HOOK}}
    (sae / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="reads width 64 but the model's residual stream has width 128"
    ):
        preflight(QdmOptions(model=str(f32_gguf), sae=str(sae), report_dir=str(tmp_path)))


def test_gguf_model_that_is_not_gguf_is_refused_at_configure_time(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        preflight(QdmOptions(model=str(fake), sae="x/y", report_dir=str(tmp_path)))
