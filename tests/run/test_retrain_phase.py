"""--qdm-retrain-sae end to end through the protocol: the phase runs on the focus condition,
and the report's terminal, markdown, HTML, JSON and JUnit outputs carry it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pytest_qdm.report import junit_properties, markdown_summary, render_report
from pytest_qdm.report.html import html_report
from pytest_qdm.schema.protocol import ProtocolReport
from tests.helpers.factories import build_model, fitted_sae, neox_config, random_tokens


@pytest.fixture(scope="module")
def report():
    import torch

    from pytest_qdm import run_protocol
    from pytest_qdm.settings import AuditConfig, ProtocolConfig

    model = build_model(neox_config())
    sae = fitted_sae(model, "blocks.1.hook_resid_post")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_protocol(
            model, sae, random_tokens(model, 32), bits=(6, 4), match_bits=6,
            protocol=ProtocolConfig(
                ppl_tokens=256, n_bootstrap=0, prune_search_steps=2,
                min_explained_variance=-10.0, retrain_tokens=1024, retrain_condition="rtn-int4",
            ),
            config=AuditConfig(progress=False),
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_protocol_retrains_on_the_named_condition(report):
    r = report.retrain
    assert r is not None and r.condition == "rtn-int4" and r.trained_tokens == 1024
    assert [row.sae for row in r.table] == ["transfer", "retrained", "pruned"]
    assert sum(s.count for s in r.bands) == report.audit.reference.n_active
    assert ProtocolReport.from_json(report.to_json()).retrain.model_dump() == r.model_dump()


def test_every_output_carries_the_retrained_baseline(report):
    console = Console(file=io.StringIO(), width=160, color_system=None)
    render_report(report, console)
    text = console.file.getvalue()
    assert "Retrained SAE baseline on rtn-int4" in text and "Lost or moved under" in text
    assert "Retrained SAE baseline on rtn-int4" in markdown_summary(report)
    assert "Lost or moved under rtn-int4 (hungarian matching)" in html_report(report)
    names = dict(junit_properties(report))
    assert "qdm.retrain.retrained.sae_ev" in names and "qdm.retrain.damaged.lost" in names
