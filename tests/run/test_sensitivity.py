"""Block sensitivity (--qdm-sensitivity): per-block RTN conditions, the read-out rule, the
greedy mixed-precision plan verified by an audit, and how reports show it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

import pytest_qdm as qdm
from pytest_qdm.analyse.sensitivity import predicted_survived_pct
from pytest_qdm.compress.conditions import RTN
from pytest_qdm.compress.mixed import BlockRTN, MixedRTN
from pytest_qdm.compress.targets import target_weights
from pytest_qdm.options_parse import build_options
from pytest_qdm.run.sensitivity import block_sensitivity
from pytest_qdm.settings import ProtocolConfig
from tests.helpers.factories import random_tokens

QUIET = qdm.AuditConfig(progress=False, token_lenses=False, drilldown_features=0)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on shared CPUs
    yield
    torch.set_num_threads(threads)


# (a) the weights: RTN exactly on the chosen blocks, the reference's own tensors elsewhere


@pytest.mark.parametrize(
    ("condition", "bits_of"),
    [
        (BlockRTN(4, blocks=(1,)), {1: 4}),
        (MixedRTN({0: 8, 2: 3}, default_bits=5), {0: 8, 1: 5, 2: 3}),
        (MixedRTN({2: 6}), {2: 6}),
    ],
)
def test_block_weights_are_rtn_on_chosen_blocks_and_reference_elsewhere(
    neox_model, condition, bits_of
):
    weights = condition.compressed_weights(neox_model)
    params = dict(neox_model.named_parameters())
    for block in range(neox_model.cfg.n_layers):
        names = target_weights(neox_model, [block])
        if block in bits_of:
            expected = RTN(bits_of[block]).compressed_weights(neox_model, [block])
            assert set(expected) == set(names)
            for name, tensor in expected.items():
                assert torch.equal(weights[name], tensor), name
        else:  # not returned: applied() leaves the model's own tensor in place
            assert not set(names) & set(weights)
    assert set(weights) <= set(params)
    for name in set(params) - set(target_weights(neox_model)):
        assert name not in weights  # embeddings, norms, biases untouched


def test_block_condition_names_and_validation(neox_model):
    assert BlockRTN(4, (3,)).name == "rtn-int4@block3"
    assert MixedRTN({3: 8, 0: 8}, default_bits=4).name == "rtn-int4+int8@blocks0,3"
    assert MixedRTN({1: 6, 2: 8}).name == "rtn-int6@block1+int8@block2"
    assert BlockRTN(4, (3,)).describe().kind == "BlockRTN"
    assert BlockRTN(4, (1,)) == BlockRTN(4, [1])
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        BlockRTN(9, (0,))
    with pytest.raises(ValueError, match="quantizes nothing"):
        MixedRTN({})
    with pytest.raises(ValueError, match="blocks 0..2, not \\[5\\]"):
        BlockRTN(4, (5,)).compressed_weights(neox_model)


# (b) a block above the read-out cannot change the features: every active r is 1


@pytest.mark.parametrize("compute_loss", [False, True])
def test_block_above_the_readout_leaves_every_feature_intact(
    neox_model, neox_sae, neox_tokens, one_thread, compute_loss
):
    # the SAE reads blocks.1.hook_resid_post; block 2 comes after it. With compute_loss the
    # forward runs the whole model, so block 2's quantized weights are really swapped in.
    config = QUIET.model_copy(update={"compute_loss": compute_loss})
    result = qdm.audit(neox_model, neox_sae, neox_tokens, [BlockRTN(2, (2,))], config)
    cond = result.conditions["rtn-int2@block2"]
    active = result.reference.active
    assert active.sum() > 10
    np.testing.assert_allclose(cond.correlation[active], 1.0, atol=1e-6)
    assert cond.summary.survived_pct == 100.0
    if compute_loss:  # the weights did change the model: its loss moved
        assert cond.mean_nll != pytest.approx(result.reference_mean_nll, rel=1e-6)


def test_prediction_is_exact_at_both_ends():
    focus = np.array([0.95, 0.5, 0.85, np.nan])
    solo = {0: np.array([0.97, 0.9, 1.0, np.nan]), 1: np.array([1.0, 0.7, 1.0, np.nan])}
    everything = predicted_survived_pct(focus, solo, {0, 1}, 0.9)
    assert everything == pytest.approx(100 * np.mean(focus[:3] > 0.9))
    assert predicted_survived_pct(focus, solo, set(), 0.9) == 100.0
    # feature 2 (r 0.85 at focus) has no solo damage: split evenly over the two blocks
    assert predicted_survived_pct(focus, solo, {1}, 0.9) == pytest.approx(200 / 3)


# (c) the bundled model: one row per block below the read-out, a verified plan


@pytest.fixture(scope="module")
def bundled(reference, sae, tokens):
    """The bundled model, its SAE and 2,048 builtin tokens [16, 128] (conftest, shared)."""
    return reference, sae, tokens


def test_bundled_model_sensitivity_and_verified_plan(bundled):
    model, sae, tokens = bundled
    result = block_sensitivity(
        model,
        sae,
        tokens,
        4,
        config=qdm.AuditConfig(progress=False),
        ppl_tokens=tokens[:4],
        bos=True,
    )
    readout = int(sae.cfg.metadata.hook_name.split(".")[1])  # blocks.4.hook_resid_post
    below = [b for b in result.blocks if not b.above_readout]
    assert [b.block for b in below] == list(range(readout + 1))
    assert all(b.survived_pct is not None and b.ppl_chunked_change is not None for b in below)
    above = [b for b in result.blocks if b.above_readout]
    assert [b.block for b in above] == list(range(readout + 1, model.cfg.n_layers))
    assert all(b.survived_pct is None and b.ppl_chunked_change is not None for b in above)
    plan = result.plan
    assert plan.raised_blocks and plan.n_audits >= 1
    assert plan.condition == MixedRTN(dict.fromkeys(plan.raised_blocks, 8), 4).name
    assert plan.survived_pct >= plan.focus_survived_pct
    assert plan.target_met or len(plan.raised_blocks) == len(below)
    # the block hurt most alone is the first raised
    worst = min(below, key=lambda b: b.survived_pct).block
    assert worst in plan.raised_blocks


# (d) the option


def test_option_parses_and_is_refused_without_a_focus_width():
    assert build_options({"model": "tiny", "sensitivity": True}).sensitivity
    assert not build_options({"model": "tiny"}).sensitivity
    base = {"model": "tiny", "sensitivity": True}
    with pytest.raises(ValueError) as error:
        build_options({**base, "match-bits": "0"})
    message = str(error.value)
    assert "\n" not in message and message.startswith("--qdm-sensitivity needs a focus width")
    with pytest.raises(ValueError, match="^--qdm-sensitivity: .* no higher precision"):
        build_options({**base, "bits": "8,4", "match-bits": "8"})


def test_plan_target_is_the_gate_bound_of_the_focus_width():
    from pytest_qdm.analyse.sensitivity import plan_target

    gates = build_options(
        {"model": "tiny", "min-survived": ["int4:0.5", "int6:0.8", "*:0.7"]}
    ).min_survived
    assert plan_target(gates, 6) == pytest.approx(0.8)
    assert plan_target(gates, 5) == pytest.approx(0.7)
    assert plan_target((), 6) == 0.9


# the protocol and its reports


@pytest.fixture(scope="module")
def report(neox_model, neox_sae, one_thread):
    return qdm.run_protocol(
        neox_model,
        neox_sae,
        random_tokens(neox_model, 32),
        bits=(8, 4),
        match_bits=4,
        protocol=ProtocolConfig(
            ppl_tokens=256,
            n_bootstrap=0,
            prune_search_steps=3,
            min_explained_variance=None,
            sensitivity=True,
            sensitivity_target=0.99,
        ),
        config=QUIET,
    )


def test_protocol_report_carries_sensitivity(report):
    s = report.sensitivity
    assert s is not None and s.focus_condition == "rtn-int4" == report.predictor_condition
    assert [(b.block, b.above_readout) for b in s.blocks] == [(0, False), (1, False), (2, True)]
    assert s.plan.focus_survived_pct == report.row("rtn-int4").survived_pct
    assert s.plan.focus_ppl_chunked_change == report.row("rtn-int4").ppl_chunked_change
    again = type(report).from_json(report.to_json())
    assert again.sensitivity == s
    assert "rtn-int4@block0" not in {r.condition for r in report.sweep}  # not in the sweep


def test_protocol_refuses_sensitivity_without_match_bits(neox_model, neox_sae, neox_tokens):
    with pytest.raises(ValueError, match="needs a focus width"):
        qdm.run_protocol(
            neox_model,
            neox_sae,
            neox_tokens,
            match_bits=None,
            protocol=ProtocolConfig(sensitivity=True),
            config=QUIET,
        )


def test_reports_show_the_table_and_the_plan(report, tmp_path):
    from pytest_qdm.report import junit_properties, markdown_summary, render_report
    from pytest_qdm.report.html import html_report

    console = Console(file=io.StringIO(), width=80, color_system=None)
    render_report(report, console)
    text = console.file.getvalue()
    start = text.index("Block sensitivity: one block at INT4")
    section = text[start : text.index("Plan:", start) + 400]
    assert "rtn-int4@block2 (above read-out)" in section
    assert max(len(line) for line in section.splitlines()) <= 80
    plan = report.sensitivity.plan
    assert f"{plan.survived_pct:.1f}%" in " ".join(section.split())
    assert "Plan:" in markdown_summary(report)
    page = html_report(report)
    assert "Block sensitivity" in page and "rtn-int4@block0" in page
    props = dict(junit_properties(report))
    assert props["qdm.sensitivity.block0.survived_pct"] == report.sensitivity.blocks[0].survived_pct
    assert "qdm.sensitivity.block2.survived_pct" not in props
    assert "qdm.sensitivity.block2.ppl_chunked_change" in props
    assert props["qdm.sensitivity.plan.survived_pct"] == plan.survived_pct
    json.dumps(props)


def test_sources_cache_key_follows_the_plan_target():
    from pytest_qdm.gate.sources import sources_key

    def key(**raw):
        return sources_key(
            build_options({"model": "tiny", **{k.replace("_", "-"): v for k, v in raw.items()}})
        )

    bound = {"min_survived": ["int6:0.5"]}
    assert key(**bound) == key()  # a gate bound alone does not change the protocol
    assert key(sensitivity=True, **bound) != key(sensitivity=True)


def test_fingerprints_without_sensitivity_leave_every_sensitivity_field_out():
    """Caches and baselines made before the option existed keep matching."""
    from pytest_qdm.gate.session import SENSITIVITY_FIELDS

    fields = {name for name in ProtocolConfig.model_fields if name.startswith("sensitivity")}
    assert fields == SENSITIVITY_FIELDS
