"""pytest glue: options and ini keys, the gate item, fixtures, the marker, the summary.

Nothing heavy happens at import or configure time: torch, transformer_lens and sae_lens load
only when a gate runs or a qdm fixture is used.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from _pytest import junitxml

OPTIONS_KEY = pytest.StashKey["object"]()
SESSION_KEY = pytest.StashKey["object"]()
WORKER_OUTCOME_KEY = pytest.StashKey[dict]()


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


# Folders and files named in an ini file are relative to that file, not to the working folder.
INI_PATHS = ("report-dir", "cache-dir", "baseline", "claims")


def options_from_config(config: pytest.Config):
    """One frozen QdmOptions from the command line (first) and the ini file, checked."""
    from pytest_qdm.options import dest, option_fields
    from pytest_qdm.options_parse import build_options

    def raw(flag: str):
        value = config.getoption(dest(flag))
        if value not in (None, [], False):
            return value
        value = config.getini(dest(flag))
        if flag in INI_PATHS and value and config.inipath is not None:
            value = str(config.inipath.parent / value)  # as pytest's own path ini values
        return value

    values = {meta["flag"]: raw(meta["flag"]) for _, meta, _ in option_fields()}
    options = build_options(values, progress=config.get_verbosity() >= 0)
    if options.model:
        from pytest_qdm.gate.preflight import preflight

        preflight(options)
    return options


@pytest.hookimpl(tryfirst=True)  # before junitxml reads --junitxml
def pytest_configure(config: pytest.Config) -> None:
    from pytest_qdm.stream.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 alone writes the JUnit XML
        config.option.xmlpath = None
    config.addinivalue_line(
        "markers",
        "qdm(bits=(6,), tokens=N, survival_threshold=R, ...): per-test settings for the qdm_audit fixture",
    )
    try:
        config.stash[OPTIONS_KEY] = options_from_config(config)
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


class QdmGate(pytest.Collector):
    """``qdm-gate``: the audit, then one item per gate check (``min_survived[rtn-int6]``,
    ``baseline``), so JUnit dashboards and ``-k`` see each on its own."""

    def collect(self):
        from pytest_qdm.gate.verdicts import planned_checks

        yield QdmAuditItem.from_parent(self, name="audit")
        for name in planned_checks(_options(self.config)):
            yield QdmCheckItem.from_parent(self, name=name)


class _GateItem(pytest.Item):
    def judged(self):
        session = _session(self.config)
        capture = self.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            return session.judged()

    def repr_failure(self, excinfo, style=None):
        from pytest_qdm.gate.baseline import BaselineRefused
        from pytest_qdm.load.formats import MissingFormatLibrary
        from pytest_qdm.load.hub import HubUnavailableError

        model = _options(self.config).model
        if isinstance(excinfo.value, QdmGateFailure):
            return f"QDM gate {self.name} failed for {model}: {excinfo.value}"
        if isinstance(excinfo.value, BaselineRefused):
            return f"QDM gate {self.name} not run for {model}: {excinfo.value}"
        if isinstance(excinfo.value, (HubUnavailableError, MissingFormatLibrary)):
            return f"QDM gate {self.name} could not load its inputs: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return Path(self.config.rootpath), None, f"qdm-gate::{self.name}"


class QdmAuditItem(_GateItem):
    """Runs the full protocol once (or reads it from the cache); its metrics become JUnit
    properties, the run's metadata suite-level ones."""

    def runtest(self) -> None:
        from pytest_qdm import __version__
        from pytest_qdm.report import junit_properties, suite_properties

        report, _ = self.judged()
        self.user_properties.extend(junit_properties(report))
        xml = self.config.stash.get(junitxml.xml_key, None)
        if xml is not None:
            session = _session(self.config)
            metadata = (report, session.fingerprint, session.cache_hit, __version__)
            for name, value in suite_properties(*metadata):
                xml.add_global_property(name, value)


class QdmCheckItem(_GateItem):
    """One gate threshold on one condition, or the baseline comparison."""

    def runtest(self) -> None:
        _, verdicts = self.judged()
        verdict = next(v for v in verdicts if v.name == self.name)
        self.user_properties.append(("qdm.verdict", "pass" if verdict.passed else "fail"))
        self.user_properties.append(("qdm.message", verdict.message))
        if not verdict.passed:
            raise QdmGateFailure(verdict.message)


class QdmClaims(pytest.Collector):
    """``qdm-claims``: one item per claim and audited condition (docs/claims.md)."""

    def collect(self):
        from pytest_qdm.claims.files import claims_of_options
        from pytest_qdm.claims.session import condition_names

        options = _options(self.config)
        for claim in claims_of_options(options):
            for condition in condition_names(options):
                yield QdmClaimItem.from_parent(
                    self, name=f"{claim.id}[{condition}]", claim=claim.id, condition=condition
                )


class QdmClaimItem(_GateItem):
    """One claim on one condition: its numbers become JUnit properties; it fails when the
    claim fails there or has no reference effect."""

    def __init__(self, *, claim: str, condition: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.claim, self.condition = claim, condition

    def runtest(self) -> None:
        from pytest_qdm.report.claims import claim_properties

        report, _ = self.judged()
        result = report.claims.result(self.claim, self.condition)
        self.user_properties.extend(claim_properties(result))
        if not result.holds:
            raise QdmGateFailure(result.message)

    def reportinfo(self):
        return Path(self.config.rootpath), None, f"qdm-claims::{self.name}"


def _uses_qdm(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return any(f.startswith("qdm_") for f in fixtures) or item.get_closest_marker("qdm") is not None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect, so they see the gate items
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
    unrelated = []
    if config.args_source != pytest.Config.ArgsSource.ARGS:  # no paths given: the gate alone
        unrelated = [item for item in items if not _uses_qdm(item)]
        if unrelated:
            config.hook.pytest_deselected(items=unrelated)
            items[:] = [item for item in items if _uses_qdm(item)]
    gate = QdmGate.from_parent(session, name="qdm-gate", nodeid="qdm-gate")
    checks = list(gate.collect())
    if options.claims:
        claims = QdmClaims.from_parent(session, name="qdm-claims", nodeid="qdm-claims")
        checks += list(claims.collect())
    items[:0] = checks
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.get_verbosity() >= 0:
        # pytest's own count would read "0 selected": say what runs, and why the rest not
        why = f"; {len(unrelated)} other tests deselected (name paths to run them)"
        reporter.write_line(
            f"qdm gate: {len(checks)} item{'s' if len(checks) > 1 else ''} "
            f"({', '.join(c.name for c in checks)})"
            f"{why if unrelated else ''}"
        )


def _held_back(item: pytest.Item):
    """Third-party noise held back while a gate item or a qdm test runs (pytest_qdm/quiet.py)."""
    options = _options(item.config)
    if not options.model or not (isinstance(item, _GateItem) or _uses_qdm(item)):
        return contextlib.nullcontext()
    from pytest_qdm.quiet import third_party_quiet

    return third_party_quiet(options.verbose)


# inside pytest's own warning capture, so its summary does not list what is held back
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _held_back(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _held_back(item):
        return (yield)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    from pytest_qdm.stream.distributed import is_main_process

    options = _options(config)
    if not options.model or hasattr(config, "workerinput") or not is_main_process():
        return
    outcome = _outcome(config) or config.stash.get(WORKER_OUTCOME_KEY, None)
    if outcome is None:  # the gate did not run in this session (deselected, failed to load)
        return
    from pytest_qdm.gate.outputs import summary_text

    width, markup = terminalreporter._tw.fullwidth, terminalreporter.hasmarkup
    terminalreporter.write(summary_text(options, outcome, width=width, markup=markup))


def _outcome(config: pytest.Config) -> dict | None:
    session = config.stash.get(SESSION_KEY, None)
    return None if session is None else session.outcome()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its own result to the controller (never through files)."""
    config = session.config
    if hasattr(config, "workeroutput") and (outcome := _outcome(config)) is not None:
        config.workeroutput["qdm_outcome"] = {**outcome, "report": outcome["report"].to_json()}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """On the xdist controller: keep the result of the worker that ran the gate."""
    outcome = getattr(node, "workeroutput", {}).get("qdm_outcome")
    kept = node.config.stash.get(WORKER_OUTCOME_KEY, None)
    if outcome is not None and (kept is None or kept["provenance"].get("cached")):
        node.config.stash[WORKER_OUTCOME_KEY] = outcome  # the worker that computed, if any


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
