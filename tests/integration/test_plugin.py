"""The plugin from outside, with pytester: options, gate, JUnit, baselines, xdist, summary.

The protocol runs once on the bundled model at a small budget; later runs in this module
hit the fingerprinted result cache, as a team's second CI run would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

QUICK = [
    "--qdm-model",
    "tiny",
    "--qdm-tokens",
    "4096",
    "--qdm-bits",
    "8,6,4",
    "-p",
    "no:cacheprovider",
]

COUNTING_CONFTEST = """
import pytest_qdm.run.protocol as protocol

_run = protocol.run_protocol

def counted(*args, **kwargs):
    with open({log!r}, "a") as log:
        log.write("run\\n")
    return _run(*args, **kwargs)

protocol.run_protocol = counted
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qdm-cache")


@pytest.fixture
def gate(pytester, cache_dir, monkeypatch):
    """Run pytest in a subprocess with the quick gate settings and a shared cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    pytester.makeini("[pytest]\n")  # rootdir = the test's folder

    def run(*args, **kwargs):
        return pytester.runpytest_subprocess(
            *QUICK, "--qdm-cache-dir", str(cache_dir), *args, **kwargs
        )

    return run


def test_help_lists_every_option(pytester):
    result = pytester.runpytest_subprocess("--help")
    for option in (
        "--qdm-model",
        "--qdm-sae",
        "--qdm-bits",
        "--qdm-min-survived",
        "--qdm-baseline",
        "--qdm-no-cache",
    ):
        result.stdout.fnmatch_lines([f"*{option}*"])
    result.stdout.fnmatch_lines(["*QDM audit*", "*(default: 8,7,6,5,4)*"])


def _best_of(args, runs=3):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def test_help_stays_fast(pytester):
    overhead = _best_of(["--help"]) - _best_of(["--help", "-p", "no:qdm"])
    assert overhead < 1.5, f"the plugin adds {overhead:.2f} s to pytest --help"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--qdm-model", "nonesuch"],
            "'nonesuch' is not a preset, a local checkpoint folder or a Hub id like org/name; "
            "known presets: pythia-70m-deduped, gemma-2-2b, gemma-3-4b, tiny",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-min-survived", "int6=0.6"],
            "is not CONDITION[@DOMAIN]:BOUND",
        ),
        (["--qdm-model", "tiny", "--qdm-bits", "8,9"], "--qdm-bits must list bit widths in 2..8"),
        (["--qdm-model", "./no/such/folder", "--qdm-sae", "x/y"], "no such checkpoint folder"),
        (["--qdm-model", "tiny", "--qdm-sae", "./missing-sae"], "no sae_lens folder"),
        (["--qdm-model", "tiny", "--qdm-baseline-fail", "survived"], "METRIC:±AMOUNT"),
        (["--qdm-model", "tiny", "--qdm-schemes", "nf4,nf5"], "'nf5' is not a scheme; use nf4"),
        (["--qdm-model", "tiny", "--qdm-lenses", "token,logit"], "--qdm-lenses: unknown ['logit']"),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune", "0.2,1.5"],
            "--qdm-sae-prune: Input should be less than 1 (got 1.5)",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune", "half"],
            "--qdm-sae-prune expects numbers like 0.1,0.25",
        ),
        (
            ["--qdm-model", "tiny", "--qdm-sae-prune-method", "l1"],
            "--qdm-sae-prune-method: Input should be 'decoder_norm_x_mean' or 'wanda'",
        ),
        (["--qdm-model", "tiny", "--qdm-top-k", "ten"], "--qdm-top-k expects an integer"),
    ],
)
def test_bad_options_fail_at_configure_with_one_line(pytester, args, message):
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "pytest-qdm:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_sae_for_another_model_is_refused_at_configure(pytester):
    from sae_lens import StandardSAE, StandardSAEConfig

    config = StandardSAEConfig(d_in=12, d_sae=24)
    config.metadata.hook_name = "blocks.1.hook_resid_post"
    StandardSAE(config).save_model(pytester.path / "other-sae")
    result = pytester.runpytest_subprocess("--qdm-model", "tiny", "--qdm-sae", "other-sae")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*reads width 12 but the model's residual stream has width*"])


def test_gate_item_is_collected_and_unrelated_tests_are_not_run(pytester, gate):
    pytester.makepyfile(test_other="def test_unrelated():\n    pass\n")
    collected = gate("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["qdm-gate::audit", "*1 deselected*"])
    explicit = gate("--collect-only", "-q", "test_other.py")
    explicit.stdout.fnmatch_lines(["qdm-gate::audit", "test_other.py::test_unrelated"])
    idle = pytester.runpytest_subprocess("--collect-only", "-q")
    assert "qdm-gate" not in idle.stdout.str()


def test_gate_passes_and_writes_reports(pytester, gate):
    result = gate("--qdm-min-survived", "int8:0.5", f"--junitxml={pytester.path / 'junit.xml'}")
    result.assert_outcomes(passed=2)  # qdm-gate::audit, qdm-gate::min_survived[rtn-int8]
    result.stdout.fnmatch_lines(["*QDM audit*", "*rtn-int8*", "*PASS*"])
    report_dir = pytester.path / "qdm-report"
    report = json.loads((report_dir / "qdm-report.json").read_text())
    assert report["schema_version"] == 1 and report["sae_fit"]["ok"]
    assert sorted(p.name for p in report_dir.glob("*.png"))
    properties = {
        p.get("name"): p.get("value")
        for p in ET.parse(pytester.path / "junit.xml").iter("property")
    }
    assert float(properties["qdm.rtn-int8.survived_pct"]) >= 50
    assert properties["qdm.model"] == "tiny" and "qdm.fingerprint" in properties  # suite level
    assert properties["qdm.verdict"] == "pass"
    cases = {
        c.get("name"): c.get("classname")
        for c in ET.parse(pytester.path / "junit.xml").iter("testcase")
    }
    assert cases == {"audit": "qdm-gate", "min_survived[rtn-int8]": "qdm-gate"}
    assert not any(" " in name for name in properties)


def test_gate_fails_with_a_readable_message(pytester, gate):
    result = gate("--qdm-min-survived", "int4:1.0", "--qdm-max-damaged", "int8:0.5")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, failed=1)  # audit and max_damaged pass; one item each
    result.stdout.fnmatch_lines(
        [
            "*QDM gate min_survived[[]rtn-int4] failed for tiny: rtn-int4 survived_pct = *, "
            "required >= 100%: FAILED*",
            "FAILED *qdm-gate::min_survived[[]rtn-int4]*",
        ]
    )
    assert "FAILED qdm-gate::max_damaged" not in result.stdout.str()


def test_schemes_lenses_and_sae_pruning_in_the_gate(pytester, gate):
    result = gate(
        "--qdm-schemes",
        "nf4,fp8-e4m3",
        "--qdm-sae-prune",
        "0.25",
        "--qdm-min-survived",
        "nf4:0.5",
        f"--junitxml={pytester.path / 'junit.xml'}",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*Token-level agreement and SAE transfer*", "*nf4-b64*"])
    result.stdout.fnmatch_lines(["*SAE pruning without retraining*", "*25%*1,536*"])
    result.stdout.fnmatch_lines(["*min_survived[[]nf4-b64]*PASS*"])
    report = json.loads((pytester.path / "qdm-report" / "qdm-report.json").read_text())
    rows = {row["condition"]: row for row in report["sweep"]}
    assert {"nf4-b64", "fp8-e4m3"} <= set(rows) and rows["fp8-e4m3"]["sample_correlation"] > 0.9
    assert (pytester.path / "qdm-report" / "sae_pruning.png").exists()
    properties = {p.get("name") for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert {"qdm.nf4-b64.topk_agreement", "qdm.sae_prune.0.25.rtn-int6.sae_ev"} <= properties

    bare = gate("--qdm-lenses", "none")
    bare.assert_outcomes(passed=1)
    assert "Token-level agreement" not in bare.stdout.str()
    report = json.loads((pytester.path / "qdm-report" / "qdm-report.json").read_text())
    assert report["transfer"] == {} and report["sweep"][1]["sample_correlation"] is None


def test_the_examples_pass_as_a_team_would_run_them(pytester, cache_dir, monkeypatch):
    """examples/ (its pytest.ini configures the gate on the bundled model) run as they are."""
    import shutil
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in examples.iterdir():
        if path.suffix in (".py", ".ini"):
            shutil.copy(path, pytester.path / path.name)
    # --opt=value: a bare path argument would move pytest's rootdir away from pytest.ini
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--qdm-cache-dir={cache_dir}")
    assert result.ret == 0, result.stdout.str()[-3000:]
    outcomes = result.parseoutcomes()  # nothing skipped: the ini configured the gate
    assert set(outcomes) <= {"passed", "warning", "warnings"}, outcomes
    assert outcomes["passed"] > len(list(examples.glob("test_*.py")))  # tests and the gate


def test_github_step_summary_is_appended(pytester, gate, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gate()
    assert "| condition" in summary.read_text().lower() or "|" in summary.read_text()


def test_baseline_write_compare_refuse_update(pytester, gate):
    baseline = pytester.path / "baseline.json"
    first = gate("--qdm-baseline", str(baseline))
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines([f"*baseline written to {baseline}*"])
    gate("--qdm-baseline", str(baseline), "--qdm-baseline-fail", "survived:-2%").assert_outcomes(
        passed=2
    )

    saved = json.loads(baseline.read_text())
    for row in saved["report"]["sweep"]:
        row["survived_pct"] = (row["survived_pct"] or 0) + 10
    baseline.write_text(json.dumps(saved))
    worse = gate("--qdm-baseline", str(baseline), "--qdm-baseline-fail", "survived:-2%")
    worse.assert_outcomes(passed=1, failed=1)
    message = " ".join(worse.stdout.str().split())  # rich wraps long table cells
    found = re.search(
        r"rtn-int8 survived: ([\d.]+) vs baseline ([\d.]+) \(-10, allowed -2\) \[survived:-2%\]",
        message,
    )
    assert found and float(found[2]) - float(found[1]) == pytest.approx(10, abs=0.1)

    saved["fingerprint"]["model_sha256"] = "0" * 64
    baseline.write_text(json.dumps(saved))
    refused = gate("--qdm-baseline", str(baseline))
    refused.assert_outcomes(passed=1, failed=1)
    refused.stdout.fnmatch_lines(["*refused, it was made for other inputs: model_sha256*"])
    updated = gate("--qdm-baseline", str(baseline), "--qdm-update-baseline")
    updated.assert_outcomes(passed=1, failed=1)
    gate("--qdm-baseline", str(baseline)).assert_outcomes(passed=2)


def test_fixtures_marker_and_assertions(pytester, gate):
    pytester.makepyfile(
        test_claims="""
        import pytest
        import pytest_qdm as qdm

        def test_survival(qdm_audit, record_property):
            qdm.assert_feature_survival(result=qdm_audit, bits=8, min_survived=0.5)

        def test_protocol_is_shared(qdm_protocol, qdm_audit):
            assert qdm_protocol.audit is qdm_audit

        @pytest.mark.qdm(bits=(4,), tokens=1024)
        def test_marker_settings(qdm_audit):
            assert list(qdm_audit.conditions) == ["rtn-int4"]
            assert qdm_audit.tokens.n_tokens <= 1024 + 128

        def test_model_sae_tokens(qdm_model, qdm_sae, qdm_tokens):
            assert qdm_tokens.tokens.shape[1] <= qdm_model.cfg.n_ctx
        """
    )
    result = gate("test_claims.py")
    result.assert_outcomes(passed=5)


def test_xdist_runs_the_protocol_once_and_keeps_properties(pytester, tmp_path, monkeypatch):
    log = tmp_path / "runs.log"
    pytester.makeconftest(COUNTING_CONFTEST.format(log=str(log)))
    pytester.makepyfile(
        test_a="def test_a(qdm_audit):\n    assert qdm_audit.conditions\n",
        test_b="def test_b(qdm_audit):\n    assert qdm_audit.conditions\n",
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cache = tmp_path / "cache"

    def run(*extra):
        junit = tmp_path / f"junit{len(extra)}.xml"
        args = [
            *QUICK,
            "--qdm-cache-dir",
            str(cache),
            f"--junitxml={junit}",
            "test_a.py",
            "test_b.py",
            *extra,
        ]
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=3)
        root = ET.parse(junit)
        return {
            case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
            for case in root.iter("testcase")
        }

    parallel = run("-n", "2")
    assert log.read_text().count("run") == 1
    serial = run()
    assert parallel == serial and serial["test_a"]["qdm.rtn-int6.survived_pct"]


def test_an_unreachable_hub_model_fails_in_one_line_naming_the_options(pytester, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "empty-hf-home"))  # nothing cached
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess("--qdm-model", "gemma-2-2b", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # at configure time, not as a failed item
    text = result.stderr.str()
    assert "--qdm-model 'gemma-2-2b' (google/gemma-2-2b) is on the Hugging Face Hub" in text
    assert "--qdm-model DIR --qdm-sae SAE_DIR --qdm-dataset FILE" in text
    assert "Traceback" not in text and len(text.splitlines()) < 5
