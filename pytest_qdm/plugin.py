"""pytest glue: options and ini keys, the gate item, fixtures, the marker, the summary.

Nothing heavy happens at import or configure time: torch, transformer_lens and sae_lens load
only when a gate runs or a qdm fixture is used.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

OPTIONS_KEY = pytest.StashKey["object"]()
SESSION_KEY = pytest.StashKey["object"]()
STARTED_KEY = pytest.StashKey[float]()

# name, metavar, default shown in help, help text, kind (str | int | float | bool | list)
OPTIONS = [
    (
        "model",
        "NAME|PATH",
        "none: the plugin stays idle",
        "model to gate: tiny (bundled), a preset (pythia-70m-deduped, gemma-2-2b) or a local HF checkpoint folder",
        "str",
    ),
    (
        "sae",
        "RELEASE/ID|PATH",
        "the preset's",
        "SAE: sae_lens release/sae_id or a local sae_lens folder",
        "str",
    ),
    ("hook", "HOOK", "the SAE's hook_name", "read-out hook, e.g. blocks.4.hook_resid_post", "str"),
    ("bits", "B,B,...", "8,7,6,5,4", "RTN bit widths to audit (2..8)", "str"),
    (
        "match-bits",
        "B",
        "6",
        "bit width whose perplexity the pruning comparison matches (0: skip)",
        "int",
    ),
    (
        "dataset",
        "SOURCE",
        "the preset's (tiny: builtin)",
        "token source: builtin, a text file, or NAME:CONFIG:SPLIT (Hugging Face datasets)",
        "str",
    ),
    ("tokens", "N", "the preset's budget", "token budget of the audit", "int"),
    ("context", "N", "the preset's", "tokens per sequence", "int"),
    ("batch-size", "N", "8", "sequences per forward pass (memory is bounded by it)", "int"),
    ("device", "DEVICE", "cuda if available, else cpu", "device for the forward passes", "str"),
    (
        "dtype",
        "DTYPE",
        "the preset's for the device",
        "model dtype, e.g. float32 or bfloat16",
        "str",
    ),
    ("survival-threshold", "R", "0.9", "r above this counts as survived", "float"),
    ("damage-threshold", "R", "0.5", "r below this counts as damaged", "float"),
    (
        "active-threshold",
        "P",
        "0.001",
        "reference firing rate above which a feature is active",
        "float",
    ),
    ("report-dir", "DIR", "qdm-report", "where the JSON report, markdown and plots go", "str"),
    (
        "min-survived",
        "COND:FRAC",
        "none",
        "gate: fail when survival is below, e.g. int6:0.6 (repeatable; * = every bit width)",
        "list",
    ),
    (
        "max-damaged",
        "COND:FRAC",
        "none",
        "gate: fail when the damaged share is above, e.g. int4:0.4 (repeatable)",
        "list",
    ),
    (
        "max-ppl-change",
        "COND:FRAC",
        "none",
        "gate: fail when the perplexity rises more, e.g. int6:0.05 (repeatable)",
        "list",
    ),
    (
        "baseline",
        "PATH",
        "none",
        "compare with a saved baseline; a missing one is written and the gate fails",
        "str",
    ),
    (
        "baseline-fail",
        "EXPR",
        "none",
        "allowed movement vs the baseline, e.g. survived:-2%, auc:-0.02 (repeatable)",
        "list",
    ),
    (
        "update-baseline",
        None,
        "off",
        "rewrite a failing or foreign baseline (the gate still fails)",
        "bool",
    ),
    (
        "schemes",
        "S,S,...",
        "none",
        "deployed schemes audited beside RTN: nf4, nf4-bN, fp8-e4m3, fp8-e5m2, absmax-int8, "
        "intB-gG (group-wise RTN)",
        "str",
    ),
    (
        "lenses",
        "L,L,...",
        "token,transfer",
        "lenses beside per-feature survival: token (sample correlation, top-k agreement, "
        "Procrustes), transfer (SAE explained variance, spliced loss); none: neither",
        "str",
    ),
    ("top-k", "K", "10", "k of the top-k feature agreement (token lens)", "int"),
    (
        "sae-prune",
        "F,F,...",
        "none",
        "SAE pruning sweep: fractions of SAE features to remove without retraining, "
        "e.g. 0.1,0.25,0.5, measured on the reference and the --qdm-match-bits model",
        "str",
    ),
    (
        "sae-prune-method",
        "METHOD",
        "decoder_norm_x_mean",
        "SAE feature importance for --qdm-sae-prune: decoder_norm_x_mean or wanda",
        "str",
    ),
    ("no-cache", None, "off", "do not read or write the on-disk result cache", "bool"),
    ("cache-dir", "DIR", ".qdm/cache", "cache of protocol results keyed by fingerprint", "str"),
    ("no-plots", None, "off", "skip the PNG plots", "bool"),
]


def _dest(name: str) -> str:
    return "qdm_" + name.replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qdm", "QDM audit: do SAE features survive compression?")
    for name, metavar, default, text, kind in OPTIONS:
        help_text = f"{text} (default: {default})"
        cli_help = help_text.replace("%", "%%")  # argparse formats help with %
        if kind == "bool":
            group.addoption(
                f"--qdm-{name}", dest=_dest(name), action="store_true", default=None, help=cli_help
            )
            parser.addini(_dest(name), help_text, type="bool", default=False)
        elif kind == "list":
            group.addoption(
                f"--qdm-{name}",
                dest=_dest(name),
                action="append",
                metavar=metavar,
                default=None,
                help=cli_help,
            )
            parser.addini(_dest(name), help_text, type="linelist", default=[])
        else:
            group.addoption(
                f"--qdm-{name}", dest=_dest(name), metavar=metavar, default=None, help=cli_help
            )
            parser.addini(_dest(name), help_text, default=None)


def _raw(config: pytest.Config, name: str):
    value = config.getoption(_dest(name))
    return value if value not in (None, []) else config.getini(_dest(name))


def build_options(config: pytest.Config):
    """One frozen QdmOptions from the command line (first) and the ini file."""
    from .config import QdmOptions, scheme_name
    from .thresholds import parse_baseline, parse_gate

    def number(name, cast):
        value = _raw(config, name)
        if value in (None, ""):
            return None
        try:
            return cast(value)
        except ValueError:
            raise ValueError(f"--qdm-{name} expects a {cast.__name__}, got {value!r}") from None

    settings = {}
    for key, name in [
        ("model", "model"),
        ("sae", "sae"),
        ("hook", "hook"),
        ("dataset", "dataset"),
        ("device", "device"),
        ("dtype", "dtype"),
        ("baseline", "baseline"),
    ]:
        settings[key] = _raw(config, name) or None
    for key, name, cast in [
        ("tokens", "tokens", int),
        ("context_length", "context", int),
        ("batch_size", "batch-size", int),
        ("survival_threshold", "survival-threshold", float),
        ("damage_threshold", "damage-threshold", float),
        ("active_threshold", "active-threshold", float),
    ]:
        value = number(name, cast)
        if value is not None:
            settings[key] = value

    def items(name: str) -> list[str] | None:
        value = _raw(config, name)
        return None if value in (None, "") else [v for v in str(value).split(",") if v.strip()]

    if (lenses := items("lenses")) is not None:
        settings["lenses"] = tuple(v.strip() for v in lenses if v.strip() != "none")
    if (schemes := items("schemes")) is not None:
        settings["schemes"] = tuple(dict.fromkeys(scheme_name(v) for v in schemes))
    if (fractions := items("sae-prune")) is not None:
        try:
            settings["sae_prune"] = tuple(float(v) for v in fractions)
        except ValueError:
            raise ValueError(
                f"--qdm-sae-prune expects fractions like 0.1,0.25, got {_raw(config, 'sae-prune')!r}"
            ) from None
    if method := _raw(config, "sae-prune-method"):
        settings["sae_prune_method"] = str(method)
    if (top_k := number("top-k", int)) is not None:
        settings["top_k"] = top_k
    bits = _raw(config, "bits")
    if bits:
        try:
            settings["bits"] = tuple(int(b) for b in str(bits).replace(" ", "").split(",") if b)
        except ValueError:
            raise ValueError(f"--qdm-bits expects integers like 8,6,4, got {bits!r}") from None
    match_bits = number("match-bits", int)
    if match_bits is not None:
        settings["match_bits"] = match_bits or None
    for key in ("report_dir", "cache_dir"):
        value = _raw(config, key.replace("_", "-"))
        if value:
            settings[key] = str(value)
    settings["gates"] = tuple(
        parse_gate(option, text)
        for option in ("min_survived", "max_damaged", "max_ppl_change")
        for text in _raw(config, option.replace("_", "-")) or []
    )
    settings["baseline_checks"] = tuple(
        parse_baseline(t) for t in _raw(config, "baseline-fail") or []
    )
    settings["update_baseline"] = bool(_raw(config, "update-baseline"))
    settings["cache"] = not _raw(config, "no-cache")
    settings["plots"] = not _raw(config, "no-plots")
    settings["progress"] = config.get_verbosity() >= 0
    try:
        options = QdmOptions(**settings)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        errors = getattr(error, "errors", None)
        raise ValueError(errors()[0]["msg"] if errors else str(error)) from None
    if options.model:
        from .specs import check_specs

        check_specs(options)
    return options


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "qdm(bits=(6,), tokens=N, survival_threshold=R, ...): per-test settings for the qdm_audit fixture",
    )
    config.stash[STARTED_KEY] = time.time()
    try:
        config.stash[OPTIONS_KEY] = build_options(config)
    except ValueError as error:
        raise pytest.UsageError(f"pytest-qdm: {error}") from None


def _options(config: pytest.Config):
    return config.stash[OPTIONS_KEY]


def _session(config: pytest.Config):
    if SESSION_KEY not in config.stash:
        from .gate import GateSession

        config.stash[SESSION_KEY] = GateSession(_options(config))
    return config.stash[SESSION_KEY]


class QdmGateFailure(Exception):
    """A missed gate threshold (reported without a traceback)."""


class QdmGateItem(pytest.Item):
    """Runs the full protocol once and judges the gate thresholds and the baseline."""

    def runtest(self) -> None:
        from .gate import baseline_verdicts, gate_verdicts, write_outputs
        from .report import junit_properties

        session = _session(self.config)
        capture = self.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else _null():
            report = session.protocol()
        verdicts = gate_verdicts(report, session.options.gates) + baseline_verdicts(session, report)
        write_outputs(report, verdicts, session.options)
        self.user_properties.extend(junit_properties(report))
        self.user_properties.extend(
            (f"qdm.gate.{v.name}", "pass" if v.passed else "fail") for v in verdicts
        )
        failed = [v for v in verdicts if not v.passed]
        if failed:
            raise QdmGateFailure("\n".join(f"FAIL {v.name}: {v.message}" for v in failed))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, QdmGateFailure):
            return f"QDM gate failed for {_options(self.config).model}:\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return Path(self.config.rootpath), None, f"qdm gate: {_options(self.config).model}"


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _uses_qdm(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return any(f.startswith("qdm_") for f in fixtures) or item.get_closest_marker("qdm") is not None


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not _options(config).model:
        return
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # no paths given: the gate alone
        unrelated = [item for item in items if not _uses_qdm(item)]
        if unrelated:
            config.hook.pytest_deselected(items=unrelated)
            items[:] = [item for item in items if _uses_qdm(item)]
    items.insert(0, QdmGateItem.from_parent(session, name="qdm-gate", nodeid="qdm-gate"))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    options = _options(config)
    if not options.model or hasattr(config, "workerinput"):
        return
    out = Path(options.report_dir)
    path = out / "qdm-report.json"
    if not path.exists() or path.stat().st_mtime < config.stash[STARTED_KEY]:
        return
    from rich.console import Console

    from .protocol import ProtocolReport
    from .report import render_report

    report = ProtocolReport.from_json(path.read_text())
    verdicts_path = out / "verdicts.json"
    verdicts = (
        [tuple(v) for v in json.loads(verdicts_path.read_text())] if verdicts_path.exists() else []
    )
    buffer = io.StringIO()
    width = terminalreporter._tw.fullwidth
    console = Console(
        file=buffer,
        width=width,
        force_terminal=terminalreporter.hasmarkup,
        color_system="auto" if terminalreporter.hasmarkup else None,
    )
    render_report(report, console, verdicts=verdicts)
    terminalreporter.write(buffer.getvalue())
    terminalreporter.write_line(f"reports: {out.resolve()}")


# Fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def qdm_session(pytestconfig):
    """The session's GateSession (skips when no --qdm-model / qdm_model is set)."""
    if not _options(pytestconfig).model:
        pytest.skip("no model to audit: pass --qdm-model tiny (or set qdm_model in the ini file)")
    return _session(pytestconfig)


@pytest.fixture(scope="session")
def qdm_model(qdm_session):
    """The audited HookedTransformer (reference weights)."""
    return qdm_session.subject.model


@pytest.fixture(scope="session")
def qdm_sae(qdm_session):
    """The frozen read-out SAE."""
    return qdm_session.subject.sae


@pytest.fixture(scope="session")
def qdm_tokens(qdm_session):
    """The shared TokenSet (``.tokens`` LongTensor [n, ctx], ``.info``)."""
    return qdm_session.subject.tokens


@pytest.fixture(scope="session")
def qdm_protocol(qdm_session):
    """The full ProtocolReport, computed once per session."""
    return qdm_session.protocol()


@pytest.fixture
def qdm_audit(request, qdm_session):
    """The AuditResult (the session's, or a run with the test's ``qdm`` marker settings);
    its key metrics go into the test's JUnit properties."""
    from .report import audit_properties

    marker = request.node.get_closest_marker("qdm")
    result = qdm_session.audit(**(marker.kwargs if marker else {}))
    for name in result.conditions:
        request.node.user_properties.extend(audit_properties(result, name))
    return result
