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


def pytest_addoption(parser: pytest.Parser) -> None:
    from pytest_qdm.options import dest, help_text, option_fields

    group = parser.getgroup("qdm", "QDM audit: do SAE features survive compression?")
    for _, meta, info in option_fields():
        flag, kind, text = meta["flag"], meta["kind"], help_text(meta, info)
        cli_help = text.replace("%", "%%")  # argparse formats help with %
        if kind in ("flag", "not-flag"):
            group.addoption(f"--qdm-{flag}", dest=dest(flag), action="store_true", help=cli_help)
            parser.addini(dest(flag), text, type="bool", default=False)
        elif kind == "list":
            group.addoption(
                f"--qdm-{flag}", dest=dest(flag), action="append", metavar=meta["metavar"],
                help=cli_help,
            )  # fmt: skip
            parser.addini(dest(flag), text, type="linelist", default=[])
        else:
            group.addoption(
                f"--qdm-{flag}", dest=dest(flag), metavar=meta["metavar"], help=cli_help
            )
            parser.addini(dest(flag), text, default=None)


def build_options(config: pytest.Config):
    """One frozen QdmOptions from the command line (first) and the ini file, checked."""
    from pytest_qdm.options import build_options, dest, option_fields

    def raw(flag: str):
        value = config.getoption(dest(flag))
        return value if value not in (None, [], False) else config.getini(dest(flag))

    values = {meta["flag"]: raw(meta["flag"]) for _, meta, _ in option_fields()}
    options = build_options(values, progress=config.get_verbosity() >= 0)
    if options.model:
        from pytest_qdm.gate.preflight import preflight

        preflight(options)
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
        from pytest_qdm.gate.session import GateSession

        config.stash[SESSION_KEY] = GateSession(_options(config))
    return config.stash[SESSION_KEY]


class QdmGateFailure(Exception):
    """A missed gate threshold (reported without a traceback)."""


class QdmGateItem(pytest.Item):
    """Runs the full protocol once and judges the gate thresholds and the baseline."""

    def runtest(self) -> None:
        from pytest_qdm.gate.outputs import write_outputs
        from pytest_qdm.gate.verdicts import baseline_verdicts, gate_verdicts
        from pytest_qdm.report import junit_properties

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
    options = _options(config)
    if not options.model:
        return
    from pytest_qdm.gate.session import check_marker

    for item in items:
        for marker in item.iter_markers("qdm"):
            try:
                check_marker(options, marker.kwargs)
            except ValueError as error:
                raise pytest.UsageError(f"pytest-qdm: {item.nodeid}: {error}") from None
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

    from pytest_qdm.report import render_report
    from pytest_qdm.schema.protocol import ProtocolReport

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
    from pytest_qdm.report import audit_properties

    marker = request.node.get_closest_marker("qdm")
    result = qdm_session.audit(**(marker.kwargs if marker else {}))
    for name in result.conditions:
        request.node.user_properties.extend(audit_properties(result, name))
    return result
