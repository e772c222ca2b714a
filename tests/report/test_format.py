"""The report package: terminal, JSON, markdown, step summary, plots, JUnit properties.

One real ProtocolReport (tiny config model, fitted SAE) is built once per module; the
tests then render it, and variants made with ``model_copy``, without running a model.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from pytest_qdm.report import (
    append_github_step_summary,
    audit_properties,
    junit_properties,
    markdown_summary,
    plot_report,
    render_audit,
    render_report,
    write_json,
)
from pytest_qdm.report._format import LENS_HEADERS
from tests.helpers.factories import build_model, fitted_sae, neox_config, random_tokens

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VERDICTS = [("rtn-int6 survived >= 60%", True, "100.0% >= 60%"), ("max damaged", False, "too many")]
MESSAGE = (
    "rtn-int4: perplexity improved -0.08% while only 92.2% of active SAE features survived "
    "(7.8% degraded, 0.0% damaged): perplexity masks feature damage."
)


@pytest.fixture(scope="module")
def report():
    import torch

    from pytest_qdm import run_protocol
    from pytest_qdm.settings import AuditConfig, ProtocolConfig

    model = build_model(neox_config())
    sae = fitted_sae(model, "blocks.1.hook_resid_post")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is many times faster on shared CPUs
    try:
        return run_protocol(
            model,
            sae,
            random_tokens(model, 32),
            # the random-weight SAE reconstructs poorly (EV < 0); audit it anyway
            protocol=ProtocolConfig(
                ppl_tokens=256,
                n_bootstrap=20,
                prune_search_steps=4,
                min_explained_variance=-10.0,
                sae_prune_fractions=(0.25,),
            ),
            config=AuditConfig(progress=False),
        )
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def with_finding(report):
    from pytest_qdm.schema.protocol import Finding

    finding = Finding(kind="perplexity_masks_damage", condition="rtn-int4", message=MESSAGE)
    return report.model_copy(update={"findings": [finding]})


def rendered(report, width=120, **kwargs) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    render_report(report, console, **kwargs)
    return console.file.getvalue()


def rtn_conditions(report) -> list[str]:
    return [row.condition for row in report.sweep if row.kind == "RTN"]


def without_lenses(report):
    """The report as a run with the lenses off and no SAE pruning sweep would give."""
    lens_fields = ("sample_correlation", "topk_agreement", "procrustes_error", "unaligned_error")
    blank = {name: None for name in (*lens_fields, "sae_explained_variance", "sae_loss_recovered")}
    sweep = [row.model_copy(update=blank) for row in report.sweep]
    return report.model_copy(update={"sweep": sweep, "transfer": {}, "sae_pruning": None})


def test_import_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys, pytest_qdm.report; "
        "print([m for m in ('torch', 'matplotlib', 'transformer_lens') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_terminal_shows_sweep_sections_finding_and_verdicts(with_finding):
    text = rendered(with_finding, verdicts=VERDICTS)
    for row in with_finding.sweep:
        assert row.condition in text
    for word in ("survived", "Pruning", "Fragility predictor", "collinear", "Stability"):
        assert word in text
    assert "perplexity masks feature damage" in text
    assert "92.2% of active SAE features" in text
    lines = text.splitlines()
    assert any("rtn-int6 survived >= 60%" in ln and "PASS" in ln for ln in lines)
    assert any("max damaged" in ln and "FAIL" in ln for ln in lines)


def test_terminal_without_findings_or_verdicts_says_so(report):
    text = rendered(report.model_copy(update={"findings": []}))
    assert "No condition held perplexity" in text
    assert "Gate verdicts" not in text


@pytest.mark.parametrize("width", [80, 100, 116, 120])
def test_terminal_fits_width_without_ansi(with_finding, width):
    text = rendered(with_finding, width=width, verdicts=VERDICTS)
    assert "\x1b" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    assert "rtn-int8" in text  # condition names are never cut at either width
    plain = Console(file=io.StringIO(), width=width)  # not a terminal: rich drops styles
    assert not plain.is_terminal
    render_report(with_finding, plain, verdicts=VERDICTS)
    assert plain.file.getvalue() == text


def test_terminal_styles_when_color_is_on(with_finding):
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system="standard")
    render_report(with_finding, console, verdicts=VERDICTS)
    assert "\x1b[" in console.file.getvalue()


def test_terminal_prints_none_as_dash_and_text_literally(report):
    from pytest_qdm.schema.protocol import Finding

    row = report.sweep[1].model_copy(update={"ppl_chunked": None, "ppl_chunked_change": None})
    odd = Finding(kind="other", condition="x", message="literal [bold]brackets[/bold]")
    variant = report.model_copy(update={"sweep": [row], "findings": [odd]})
    text = rendered(variant)
    line = next(ln for ln in text.splitlines() if ln.startswith(row.condition))
    assert "—" in line  # the missing chunked perplexity
    assert "AUC —" in text  # one-class predictor: no AUC
    assert "literal [bold]brackets[/bold]" in text


def test_optional_sections_follow_the_report(report):
    stability = report.stability.model_copy(update={"second_layer": report.audit})
    variant = report.model_copy(
        update={"pruning": None, "overlap": None, "match_bits": None, "stability": stability}
    )
    text, markdown = rendered(variant), markdown_summary(variant)
    assert "Pruning" not in text and "Matched pruning" not in markdown
    assert "second layer blocks.1.hook_resid_post" in text
    assert "Second layer blocks.1.hook_resid_post" in markdown
    values = dict(junit_properties(variant))
    assert not any(name.startswith(("qdm.pruning.", "qdm.overlap.")) for name in values)
    assert "qdm.second_layer.rtn-int6.survived_pct" in values


def test_render_audit_lists_every_condition(report):
    console = Console(file=io.StringIO(), width=80, color_system=None)
    render_audit(report.audit, console)
    text = console.file.getvalue()
    assert all(name in text for name in report.audit.conditions)
    assert "survived" in text and "\x1b" not in text


def test_write_json_is_atomic_and_round_trips(report, tmp_path):
    from pytest_qdm.schema.audit import AuditResult
    from pytest_qdm.schema.protocol import ProtocolReport

    path = write_json(report, tmp_path / "out" / "report.json")
    assert path == tmp_path / "out" / "report.json"
    assert ProtocolReport.from_json(path.read_text()).to_json() == report.to_json()
    audit_path = write_json(report.audit, tmp_path / "out" / "audit.json")
    assert AuditResult.from_json(audit_path.read_text()).to_json() == report.audit.to_json()
    write_json(report, path)  # overwriting works
    assert sorted(p.name for p in path.parent.iterdir()) == ["audit.json", "report.json"]


def test_write_json_failure_keeps_old_file_and_no_temp(report, tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(report, path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_markdown_has_table_findings_and_verdicts(with_finding):
    text = markdown_summary(with_finding, verdicts=[*VERDICTS, ("a|b", True, "pipe")])
    lines = text.splitlines()
    header = lines.index(next(ln for ln in lines if ln.startswith("| condition |")))
    assert lines[header + 1].startswith("| --- |")
    for row in with_finding.sweep:
        assert f"| {row.condition} | " in text
    assert f"> **{MESSAGE}**" in text
    assert "**Matched pruning:**" in text and "**Predictor" in text
    assert any("max damaged" in ln and "FAIL" in ln for ln in lines)
    assert "| a\\|b |" in text


def test_github_step_summary_appends(tmp_path):
    target = tmp_path / "summary.md"
    environ = {"GITHUB_STEP_SUMMARY": str(target)}
    assert append_github_step_summary("# one", environ) == target
    assert append_github_step_summary("# two\n", environ) == target
    assert target.read_text() == "# one\n# two\n"
    assert append_github_step_summary("# three", {}) is None


def test_plot_report_writes_pngs(report, tmp_path):
    import matplotlib.pyplot as plt

    paths = plot_report(report, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "survival_vs_bits.png",
        "correlation_hist.png",
        "survival_by_peak_quartile.png",
        "rtn_vs_pruning_damage.png",
        "lenses_vs_survival.png",
        "sae_pruning.png",
    ]
    for path in paths:
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert plt.get_fignums() == []  # every figure closed
    fewer = plot_report(without_lenses(report).model_copy(update={"overlap": None}), tmp_path)
    assert [p.name for p in fewer] == [p.name for p in paths[:3]]


def test_junit_properties_are_flat_unique_and_cover_rtn(report):
    props = junit_properties(report)
    names = [name for name, _ in props]
    assert len(names) == len(set(names))
    assert all(name.startswith("qdm.") for name in names)
    for _, value in props:
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool)
        json.dumps(value)
    values = dict(props)
    for condition in rtn_conditions(report):
        assert values[f"qdm.{condition}.survived_pct"] == report.row(condition).survived_pct
        assert f"qdm.{condition}.damaged_pct" in values
    assert values["qdm.findings"] == len(report.findings)
    assert values["qdm.pruning.sparsity"] == report.pruning.sparsity
    assert values["qdm.null.passed"] in (0, 1)
    assert "qdm.predictor.auc" not in values  # one class in this tiny model: None is skipped


def test_junit_properties_include_predictor_auc_when_fitted(report):
    fitted = report.predictor.model_copy(update={"status": "ok", "auc_mean": 0.9, "auc_std": 0.01})
    values = dict(junit_properties(report.model_copy(update={"predictor": fitted})))
    assert values["qdm.predictor.auc"] == 0.9 and values["qdm.predictor.status"] == "ok"


def test_audit_properties_for_one_condition(report):
    props = dict(audit_properties(report.audit, "rtn-int4"))
    summary = report.audit.conditions["rtn-int4"].summary
    assert props["qdm.rtn-int4.survived_pct"] == summary.survived_pct
    assert props["qdm.rtn-int4.n_active"] == summary.n_active
    assert all(name.startswith("qdm.rtn-int4.") for name in props)
    with pytest.raises(ValueError, match="rtn-int9"):
        audit_properties(report.audit, "rtn-int9")


def test_lens_and_sae_pruning_tables_in_terminal_and_markdown(report):
    text, markdown = rendered(report, width=160), markdown_summary(report)
    for output in (text, markdown):
        assert "Token-level agreement and SAE transfer" in output
        assert "SAE pruning without retraining" in output and "decoder_norm_x_mean" in output
    assert "Token averages are dominated by strong features" in markdown
    reference = report.row("reference")
    assert reference.sample_correlation == 1.0 and reference.topk_agreement == 1.0
    quality = report.transfer["rtn-int4"]
    lens_row = next(ln for ln in markdown.splitlines() if ln.startswith("| rtn-int4 | 0."))
    assert len(lens_row.split("|")) == len(LENS_HEADERS) + 2
    assert f"{quality.explained_variance:.3f}" in lens_row
    assert f"{quality.spliced_loss - quality.clean_loss:+.3f}" in lens_row
    kept = report.sae_pruning.row(0.25).n_features_kept
    assert any(ln.startswith(f"| 25% | {kept:,} |") for ln in markdown.splitlines())
    bare = without_lenses(report)
    for output in (rendered(bare, width=160), markdown_summary(bare)):
        assert "Token-level agreement" not in output and "SAE pruning" not in output


def test_junit_properties_of_lenses_and_sae_pruning(report):
    values = dict(junit_properties(report))
    row = report.row("rtn-int4")
    assert values["qdm.rtn-int4.sample_r"] == row.sample_correlation
    assert values["qdm.rtn-int4.topk_agreement"] == row.topk_agreement
    assert values["qdm.rtn-int4.procrustes_error"] == row.procrustes_error
    sweep_row = report.sae_pruning.row(0.25, report.predictor_condition)
    name = f"qdm.sae_prune.0.25.{report.predictor_condition}.sae_ev"
    assert values[name] == sweep_row.explained_variance
    bare = dict(junit_properties(without_lenses(report)))
    assert "qdm.rtn-int4.sample_r" not in bare
    assert not any(n.startswith("qdm.sae_prune.") for n in bare)


def test_baselines_compare_the_token_lenses(report):
    from pytest_qdm.gate.baseline import compare
    from pytest_qdm.gate.thresholds import parse_baseline

    worse = [
        row.model_copy(update={"topk_agreement": row.topk_agreement - 0.05})
        if row.condition == "rtn-int4"
        else row
        for row in report.sweep
    ]
    run = report.model_copy(update={"sweep": worse})
    checks = [parse_baseline("topk:-0.02"), parse_baseline("int4.sae_ev:-0.01")]
    failures = compare(run, report, checks)
    assert len(failures) == 1 and failures[0].startswith("rtn-int4 topk: ")
    assert "allowed -0.02) [topk:-0.02]" in failures[0]
    assert compare(report, report, [parse_baseline("procrustes:+0.01")]) == []
