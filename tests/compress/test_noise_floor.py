"""Noise-floor conditions: each runs the reference another way and restores nothing it
should not; the floor is stated from the rows."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import pytest_qdm as qdm
from pytest_qdm.analyse.floor import floor_findings
from pytest_qdm.compress.noise_floor import DoubledBatch, NoiseFloor, noise_floor
from pytest_qdm.stream.hooks import run_to_hook

HOOK = "blocks.1.hook_resid_post"


def test_exported_and_checked(neox_model):
    assert qdm.NoiseFloor is NoiseFloor
    assert [c.name for c in noise_floor(neox_model)] == [
        "floor-bfloat16",
        "floor-float16",
        "floor-batch",
    ]  # a HookedTransformer has no attention implementation to switch
    with pytest.raises(ValueError, match="one of"):
        NoiseFloor("int8")
    with pytest.raises(ValueError, match="other backend"):
        NoiseFloor("backend")


def test_half_precision_runs_a_cast_copy_and_leaves_the_model(neox_model, neox_tokens):
    before = {n: p.detach().clone() for n, p in neox_model.named_parameters()}
    with NoiseFloor("bfloat16").running(neox_model, {}) as running:
        assert running is not neox_model
        assert next(running.parameters()).dtype == torch.bfloat16
        act, _ = run_to_hook(running, neox_tokens[:2], HOOK)
    reference, _ = run_to_hook(neox_model, neox_tokens[:2], HOOK)
    assert act.shape == reference.shape and not torch.equal(act.float(), reference)
    # bf16 has 8 mantissa bits: the activations agree to its rounding, not exactly
    assert torch.allclose(act.float(), reference, rtol=0.1, atol=0.1)
    for name, param in neox_model.named_parameters():
        assert torch.equal(param, before[name]) and param.dtype == torch.float32


def test_doubled_batch_reads_the_first_half(neox_model, neox_tokens):
    batch = neox_tokens[:3]
    doubled = DoubledBatch(neox_model)
    act, loss = run_to_hook(doubled, batch, HOOK, loss=True)
    expected, expected_loss = run_to_hook(neox_model, batch, HOOK, loss=True)
    assert act.shape == expected.shape and loss.shape == expected_loss.shape
    torch.testing.assert_close(act, expected, rtol=1e-5, atol=1e-5)
    logits = doubled(batch, return_type="logits")
    assert logits.shape[0] == 3


def test_floor_conditions_in_the_protocol(neox_model, neox_sae, neox_tokens):
    from pytest_qdm.settings import AuditConfig, ProtocolConfig

    report = qdm.run_protocol(
        neox_model,
        neox_sae,
        neox_tokens,
        bits=(4,),
        match_bits=None,
        config=AuditConfig(batch_size=4, progress=False, survival_threshold=0.9),
        protocol=ProtocolConfig(
            ppl_tokens=256, n_shards=4, n_bootstrap=20, sae_transfer=False,
            min_explained_variance=None,
        ),
        extra_conditions=noise_floor(neox_model),
    )  # fmt: skip
    rows = {r.condition: r for r in report.sweep}
    assert rows["floor-bfloat16"].kind == "NoiseFloor"
    assert 0 < rows["floor-bfloat16"].kl < rows["rtn-int4"].kl
    floor = [f for f in report.findings if f.kind == "noise_floor"]
    worst = min(rows[n].survived_pct for n in rows if n.startswith("floor-"))
    assert len(floor) == 1 and f"{worst:.1f}%" in floor[0].message
    assert not any(
        f.kind.endswith("masks_damage") and f.condition.startswith("floor-")
        for f in report.findings
    )


def test_within_reach_marks_conditions_at_or_above_the_floor():
    from pytest_qdm.schema.protocol import SweepRow

    def row(name, kind, survived, ci=None):
        return SweepRow(
            condition=name, kind=kind, bits=None, sparsity=None, ppl_chunked=None,
            ppl_chunked_change=None, ppl_sliding=None, ppl_sliding_change=None,
            mean_correlation=None, median_correlation=None, survived_pct=survived,
            degraded_pct=None, damaged_pct=None, silenced_count=0, emergent_count=0,
            survived_ci=ci,
        )  # fmt: skip

    rows = [
        row("reference", "Reference", 100.0),
        row("rtn-int8", "RTN", 95.0, (94.0, 96.0)),
        row("rtn-int6", "RTN", 88.0, (86.0, 91.0)),
        row("rtn-int4", "RTN", 50.0, (48.0, 52.0)),
        row("floor-bfloat16", "NoiseFloor", 92.0),
        row("floor-batch", "NoiseFloor", 99.0),
    ]
    found = floor_findings(rows)
    assert found[0].kind == "noise_floor" and found[0].condition == "floor-bfloat16"
    assert [f.condition for f in found[1:]] == ["rtn-int8"]  # int6's upper end 91 < 92


def test_attention_floor_switches_a_bridged_model_and_restores_it():
    from pytest_qdm.compress.noise_floor import attention_implementation
    from pytest_qdm.load.models import load_model

    bridge = load_model("tiny", backend="bridge", device="cpu")
    own = attention_implementation(bridge)
    assert own in ("eager", "sdpa")
    assert "floor-attention" in [c.name for c in noise_floor(bridge)]
    tokens = torch.arange(1, 33).reshape(2, 16)
    hook = "blocks.1.hook_resid_post"
    reference, _ = run_to_hook(bridge, tokens, hook)
    with NoiseFloor("attention").running(bridge, {}) as running:
        assert attention_implementation(running) != own
        other, _ = run_to_hook(running, tokens, hook)
    assert attention_implementation(bridge) == own
    torch.testing.assert_close(other, reference, rtol=1e-4, atol=1e-4)
