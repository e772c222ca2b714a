"""Everything that can be checked without a model is refused at configure time, in one
line that names the option, before anything heavy is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_qdm.gate.preflight import preflight
from pytest_qdm.gate.session import check_marker
from pytest_qdm.options import QdmOptions, help_text, option_fields
from pytest_qdm.options_parse import build_options
from pytest_qdm.settings import AuditConfig


def test_option_table_and_settings_agree_field_by_field():
    audit = AuditConfig.model_fields
    for name, meta, info in option_fields():
        assert meta["flag"] and info.description, name
        assert "(default: " in help_text(meta, info)
        if name in audit:
            assert info.default == audit[name].default, name


def test_out_of_range_threshold_is_refused():
    with pytest.raises(ValueError, match="survival_threshold"):
        QdmOptions(survival_threshold=5)
    with pytest.raises(ValueError, match="^--qdm-survival-threshold: "):
        build_options({"model": "tiny", "survival-threshold": "5"})


def test_option_errors_are_one_line_naming_the_option():
    for raw, start in [
        ({"bits": "9"}, "--qdm-bits must list bit widths in 2..8"),
        ({"bits": "8,x"}, "--qdm-bits expects integers"),
        ({"min-survived": ["int6:1.5"]}, "--qdm-min-survived: "),
        ({"sae-prune-method": "magic"}, "--qdm-sae-prune-method: "),
    ]:
        with pytest.raises(ValueError) as error:
            build_options(raw)
        message = str(error.value)
        assert message.startswith(start) and "\n" not in message and "Value error" not in message


def test_parsing():
    options = build_options({"bits": "8,4", "match-bits": "0", "no-cache": True, "lenses": "none"})
    assert options.bits == (8, 4) and options.match_bits is None
    assert not options.cache and options.lenses == ()
    assert options.audit_config().survival_threshold == AuditConfig().survival_threshold


def test_misspelled_marker_keyword_gets_the_closest_name():
    options = QdmOptions(model="tiny")
    with pytest.raises(ValueError, match="did you mean 'survival_threshold'"):
        check_marker(options, {"survival_treshold": 0.2})
    with pytest.raises(ValueError, match="survival_threshold"):
        check_marker(options, {"survival_threshold": 5})
    with pytest.raises(ValueError, match="bits must be integers in 2..8"):
        check_marker(options, {"bits": (9,)})
    check_marker(options, {"bits": (6,), "tokens": 256, "survival_threshold": 0.8})


def test_report_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("x")
    with pytest.raises(ValueError, match="--qdm-report-dir .* is a file, not a folder"):
        preflight(QdmOptions(model="tiny", report_dir=str(target)))
    with pytest.raises(ValueError, match="--qdm-cache-dir .* not writable|is a file"):
        preflight(QdmOptions(model="tiny", cache_dir=str(target / "cache")))


@pytest.mark.parametrize("content", ["", "{not json", '{"fingerprint": 1}'])
def test_unreadable_baseline_is_refused_unless_it_will_be_rewritten(tmp_path, content):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(content)
    options = dict(model="tiny", baseline=str(baseline), report_dir=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="not a pytest-qdm baseline.*--qdm-update-baseline"):
        preflight(QdmOptions(**options))
    preflight(QdmOptions(**options, update_baseline=True))


def test_conditions_tokens_dataset_and_device(tmp_path):
    base = dict(model="tiny", report_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="names rtn-int3, which this run does not audit: add 3"):
        preflight(build_options({**base, "min-survived": ["int3:0.5"]}))
    with pytest.raises(ValueError, match="--qdm-tokens 100 is less than one sequence of 128"):
        preflight(QdmOptions(**base, tokens=100))
    with pytest.raises(ValueError, match="--qdm-dataset .*hf:NAME:CONFIG:SPLIT"):
        preflight(QdmOptions(**base, dataset=str(tmp_path / "missing.txt")))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--qdm-device cuda: torch .* use --qdm-device cpu"):
            preflight(QdmOptions(**base, device="cuda"))
    preflight(QdmOptions(**base))


def test_configure_checks_import_nothing_heavy(tmp_path):
    code = (
        "import sys\n"
        "from pytest_qdm.gate.preflight import preflight\n"
        "from pytest_qdm.options import QdmOptions\n"
        f"preflight(QdmOptions(model='tiny', report_dir={str(tmp_path / 'r')!r}))\n"
        "print(sorted(m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
