"""The two paths a shipped checkpoint is audited by: ``dequantize`` (the format's library
dequantizes the weights, swapped into the reference) and ``forward`` (the deployed quantized
forward, read at the same hook through a TransformerLens TransformerBridge).

Checkpoints are made by the real libraries from the bundled model (tests/load/test_checkpoints.py).
The audits here read 2 sequences of 128 tokens, to keep each test to seconds.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import pytest_qdm as qdm
from pytest_qdm.load.checkpoints import CheckpointInfo, choose_path, inspect_checkpoint
from pytest_qdm.stream.hooks import run_to_hook
from pytest_qdm.zoo import weights_dir
from tests.helpers.libraries import needs
from tests.load.test_checkpoints import (  # noqa: F401 (shipped: a fixture)
    bnb_folder,
    llmcompressor_folder,
    nf4_folder,
    shipped,
)

pytest_plugins = ["pytester"]

HOOK = "blocks.1.hook_resid_post"  # the bundled SAE's read-out


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> str:
    """The bundled model's own weights as a dense checkpoint folder."""
    folder = tmp_path_factory.mktemp("dense") / "tiny-dense"
    shutil.copytree(weights_dir(), folder, ignore=shutil.ignore_patterns("sae_*"))
    return str(folder)


@pytest.fixture(scope="module")
def few(tokens):
    return tokens[:2]


def both_paths(folder: str):
    """The checkpoint loaded by each path (named by it)."""
    return {
        path: qdm.Candidate.from_pretrained(folder, name=path, path=path, device="cpu")
        for path in ("dequantize", "forward")
    }


def readouts(reference, candidates: dict, batch) -> dict:
    """Each candidate's read-out activations as the engine gets them."""
    out = {}
    with torch.inference_mode():
        for name, candidate in candidates.items():
            weights = candidate.compressed_weights(reference)
            with candidate.running(reference, weights) as model:
                out[name] = run_to_hook(model, batch, HOOK)[0]
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def paired_r(reference, sae, tokens, candidates: dict) -> tuple[dict, dict]:
    """Per-feature r over the reference's active features, and survival, by candidate."""
    result = qdm.audit(
        reference, sae, tokens, list(candidates.values()), qdm.AuditConfig(progress=False)
    )
    active = result.reference.active
    r = {n: result.conditions[n].correlation[active] for n in candidates}
    return r, {n: result.conditions[n].summary.survived_pct for n in candidates}


def test_bridge_of_a_dense_copy_reads_what_the_reference_reads(reference, sae, few, dense):
    """What makes the paths comparable: the bridge's hooks, unprocessed, are the
    HookedTransformer's to float32 rounding (different op order), loss too."""
    candidate = qdm.Candidate.from_pretrained(dense, path="forward", device="cpu")
    assert type(candidate.model).__name__ == "TransformerBridge"
    assert candidate.checkpoint.path == "forward" and candidate.compressed_weights(reference) == {}
    with torch.inference_mode():
        for hook in (HOOK, "blocks.4.hook_resid_post", "blocks.2.hook_mlp_out"):
            ours, _ = run_to_hook(candidate.model, few, hook)
            theirs, _ = run_to_hook(reference, few, hook)
            torch.testing.assert_close(
                ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max())
            )
        _, loss = run_to_hook(candidate.model, few, HOOK, loss=True)
        _, expected = run_to_hook(reference, few, HOOK, loss=True)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    result = qdm.audit(
        reference, sae, few, [candidate], qdm.AuditConfig(progress=False, compute_loss=True)
    )
    cond = result.conditions[candidate.name]
    assert np.nanmin(cond.correlation) > 1 - 1e-6
    assert cond.mean_nll == pytest.approx(result.reference_mean_nll, rel=1e-6)
    from pytest_qdm.analyse.perplexity import chunked_perplexity, perplexity_under

    ours = perplexity_under(reference, candidate, few, bos_in_tokens=True).perplexity
    assert ours == pytest.approx(
        chunked_perplexity(reference, few, bos_in_tokens=True).perplexity, rel=1e-6
    )


def test_llm_int8_forward_path_quantizes_activations(reference, sae, few, shipped):  # noqa: F811
    folder = bnb_folder(shipped, "tiny-llm-int8", load_in_8bit=True)
    assert inspect_checkpoint(folder).path == "forward"  # the scheme's own path
    candidates = both_paths(folder)
    forward = candidates["forward"].model
    # the forward path's read-out is the deployed model's own forward (no hook in between)
    acts = readouts(reference, candidates, few)
    with torch.inference_mode():
        hidden = forward.original_model(few, output_hidden_states=True).hidden_states[2]
    assert torch.equal(acts["forward"], hidden.reshape(acts["forward"].shape))
    layers = [m for m in forward.original_model.modules() if type(m).__name__ == "Linear8bitLt"]
    assert len(layers) == 6 * 7  # every block linear (lm_head stays dense)
    # the kernel under the bridge quantizes its input: one LLM.int8 layer equals its
    # dequantized weights times the input rounded to int8 per row (absmax / 127, after
    # bitsandbytes' float16 cast; no outliers below the threshold 6), not times the input
    layer = layers[0]
    scales = (
        layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    )  # after a forward
    weight = layer.weight.data.float() * scales.float()[:, None] / 127
    x = (torch.randn(64, weight.shape[1], generator=torch.Generator().manual_seed(0)) * 2).clamp(
        -5.9, 5.9
    )
    scale = x.half().float().abs().amax(dim=1, keepdim=True) / 127
    int8_input = torch.round(x.half().float() / scale) * scale
    with torch.inference_mode():
        out = layer(x)
    emulated = torch.nn.functional.linear(int8_input, weight)
    dense = torch.nn.functional.linear(x, weight)
    # measured 2.3e-4 (the float16 output) vs 6.3e-3
    assert relative(out, emulated) < 1e-3 < relative(out, dense)
    # so the read-out moves from the dequantize path's (measured 0.41 % of its norm on these
    # 256 tokens), and per-feature r with it (survival 96.1 % dequantize, 95.1 % forward)
    assert relative(acts["forward"], acts["dequantize"]) > 1e-3
    r, survived = paired_r(reference, sae, few, candidates)
    assert np.abs(r["forward"] - r["dequantize"]).max() > 0.1
    assert survived["forward"] < survived["dequantize"]


def test_nf4_forward_path_is_close_to_the_dequantize_path(reference, sae, few, shipped):  # noqa: F811
    """NF4 is weight-only: the forward path's kernel multiplies by the same dequantized
    weights. Not bit-equal here: bitsandbytes' fused CPU 4-bit kernel computes in bfloat16
    (activations and block scales cast; backends/cpu/ops.py), so the read-outs agree to
    bfloat16 rounding (2^-8 = 0.4 % per element; measured 0.32 % of the norm), which moves
    per-feature r by a median of 3e-5 (a few rare features more) and survival by 0.75 points
    (6 of 798 active features) on these 256 tokens. Where the kernel runs in float32 the
    two agree to float32 rounding (torchao's int8 weight-only below)."""
    folder = nf4_folder(shipped)
    assert inspect_checkpoint(folder).path == "dequantize"  # the scheme's own path
    candidates = both_paths(folder)
    acts = readouts(reference, candidates, few)
    assert relative(acts["forward"], acts["dequantize"]) < 1e-2
    r, survived = paired_r(reference, sae, few, candidates)
    assert np.median(np.abs(r["forward"] - r["dequantize"])) < 1e-3
    assert abs(survived["forward"] - survived["dequantize"]) < 1.5


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "W8A8"])
def test_compressed_tensors_rounds_inputs_per_token(reference, sae, few, shipped, scheme):  # noqa: F811
    """Decompressed at load (``run_compressed=False``'s successor), each compressed-tensors
    module keeps its quantized forward: under the bridge a layer equals its weights times
    the input rounded per token, to FP8 e4m3 (scale absmax / 448) or to symmetric int8
    (scale absmax / 127.5, q in -128..127), exactly."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
    folder = llmcompressor_folder(shipped, f"tiny-{scheme.lower()}", modifier)
    assert inspect_checkpoint(folder).path == "forward"
    candidates = both_paths(folder)
    bridged = candidates["forward"].model.original_model
    layer = next(m for m in bridged.modules() if hasattr(m, "weight_scale"))
    x = torch.randn(2, 32, layer.in_features, generator=torch.Generator().manual_seed(0)) * 2
    absmax = x.abs().amax(dim=-1, keepdim=True)  # per token ([batch, position, features])
    if scheme == "FP8_DYNAMIC":
        scale = absmax / torch.finfo(torch.float8_e4m3fn).max
        rounded = (x / scale).to(torch.float8_e4m3fn).float() * scale
    else:
        scale = absmax / 127.5
        rounded = torch.clamp(torch.round(x / scale), -128, 127) * scale
    with torch.inference_mode():
        out = layer(x)
    torch.testing.assert_close(out, torch.nn.functional.linear(rounded, layer.weight))
    assert relative(out, torch.nn.functional.linear(x, layer.weight)) > 1e-3
    r, survived = paired_r(reference, sae, few, candidates)
    assert np.abs(r["forward"] - r["dequantize"]).max() > 0.1


def torchao_folder(make, name: str, config) -> str:
    needs("torchao", "torchao")
    from transformers import TorchAoConfig

    def quantize(auto, src):
        model = auto.from_pretrained(
            src, dtype=torch.float32, device_map="cpu", quantization_config=TorchAoConfig(config)
        )
        model.save_pretrained = lambda folder: type(model).save_pretrained(
            model, folder, safe_serialization=False
        )
        return model

    return make(name, quantize)


def test_torchao_paths_weight_only_vs_dynamic_activations(reference, sae, few, shipped):  # noqa: F811
    """torchao's int8 weight-only kernel multiplies by its dequantized weights in float32:
    the paths agree to float32 rounding (r within 1e-5). Its dynamic-activation config
    quantizes each token's activations to int8: forward by default, and it moves r."""
    needs("torchao", "torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    weight_only = torchao_folder(shipped, "tiny-ao-int8", Int8WeightOnlyConfig())
    assert inspect_checkpoint(weight_only).path == "dequantize"
    r, survived = paired_r(reference, sae, few, both_paths(weight_only))
    assert np.abs(r["forward"] - r["dequantize"]).max() < 1e-5
    assert survived["forward"] == survived["dequantize"]
    dynamic = torchao_folder(shipped, "tiny-ao-int8-dyn", Int8DynamicActivationInt8WeightConfig())
    info = inspect_checkpoint(dynamic)
    assert info.activations_quantized and info.path == "forward"
    r, _ = paired_r(reference, sae, few, both_paths(dynamic))
    assert np.abs(r["forward"] - r["dequantize"]).max() > 0.1


def test_paths_that_cannot_run_are_refused_in_one_line(tmp_path, reference, dense):
    from pytest_qdm.gate.preflight import preflight
    from pytest_qdm.options_parse import build_options

    for method in ("gguf", "hqq"):
        info = CheckpointInfo(tmp_path, method, "Q8_0", method == "gguf", gguf_file="m.gguf")
        assert choose_path(info) == "dequantize"  # GGUF's q8 activations: no forward here
        with pytest.raises(
            ValueError, match=f"no forward path for {method}: .*; use the dequantize path"
        ) as error:
            choose_path(info, "forward")
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="candidate path must be one of dequantize, forward"):
        choose_path(inspect_checkpoint(dense), "bridge")
    with pytest.raises(
        ValueError,
        match=r"^--qdm-candidate-path: Input should be 'dequantize', 'forward' or 'served'",
    ):
        build_options({"model": "tiny", "candidate": [dense], "candidate-path": "bridge"})
    # a bridge without the read-out hook is refused before any forward pass
    candidate = qdm.Candidate.from_pretrained(dense, path="forward", device="cpu")
    with pytest.raises(ValueError, match="has no hook 'blocks.1.hook_nowhere', the read-out"):
        candidate.check_compatible(reference, "blocks.1.hook_nowhere")
    # the bridge needs a tokenizer: the folder's, else the one passed (the gate passes the
    # reference's)
    bare = tmp_path / "bare"
    shutil.copytree(dense, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(ValueError, match="has no tokenizer .* save the tokenizer beside"):
        qdm.Candidate.from_pretrained(str(bare), path="forward", device="cpu")
    given = qdm.Candidate.from_pretrained(
        str(bare), path="forward", device="cpu", tokenizer=reference.tokenizer
    )
    given.check_compatible(reference, HOOK)
    gguf = needs("gguf", "gguf")
    from tests.helpers.gguf_writer import write_llama_gguf

    file = tmp_path / "tiny.Q8_0.gguf"
    write_llama_gguf(weights_dir(), file, gguf.GGMLQuantizationType.Q8_0)
    options = build_options(
        {"model": "tiny", "candidate": [str(file)], "candidate-path": "forward"}
    )
    with pytest.raises(ValueError, match=r"^--qdm-candidate: .*no forward path for gguf: trans"):
        preflight(options)
