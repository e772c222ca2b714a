"""Baselines are checked before the work: a newer schema is refused at configure time, one
made for other inputs as soon as the run's fingerprint is known, before the audit."""

from __future__ import annotations

import pytest

from pytest_qdm.gate.baseline import BaselineRefused, read_baseline, write_baseline
from pytest_qdm.gate.preflight import preflight
from pytest_qdm.gate.session import GateSession
from pytest_qdm.options_parse import build_options
from pytest_qdm.schema.gate import Fingerprint


def options(tmp_path, **raw):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 97} and then some text" for i in range(400)))
    settings = {"model": "tiny", "tokens": 256, "context": 32, "dataset": str(corpus)}
    return build_options({**settings, "bits": "8", "match-bits": 0, "no-cache": True, **raw})


def fingerprint(**changes) -> Fingerprint:
    values = dict(model="tiny", model_sha256="0", sae="s", sae_sha256="0", hook="h")
    values |= dict(tokens_sha256="0", corpus_sha256=None, settings="{}", versions={})
    return Fingerprint(**(values | changes))


def test_a_baseline_from_a_newer_pytest_qdm_is_refused_at_configure(tmp_path, tiny_report):
    path = tmp_path / "baseline.json"
    write_baseline(path, fingerprint(), tiny_report.model_copy(update={"schema_version": 999}))
    with pytest.raises(ValueError, match="^--qdm-baseline: .*schema_version 999, newer") as error:
        preflight(options(tmp_path, baseline=str(path)))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="schema_version 999"):
        read_baseline(path)
    preflight(options(tmp_path, baseline=str(path), **{"update-baseline": True}))  # rewrites


def test_a_baseline_for_other_inputs_is_refused_before_the_audit(
    tmp_path, tiny_report, monkeypatch
):
    import pytest_qdm.run.protocol as protocol

    path = tmp_path / "baseline.json"
    session = GateSession(options(tmp_path, baseline=str(path)))
    ours = session.fingerprint.model_dump()
    write_baseline(path, fingerprint(**(ours | {"model_sha256": "0" * 64})), tiny_report)
    monkeypatch.setattr(protocol, "run_protocol", lambda *a, **k: pytest.fail("audit ran"))
    with pytest.raises(BaselineRefused, match="other inputs: model_sha256: baseline '0000") as e:
        session.protocol()
    assert "\n" not in str(e.value) and "--qdm-update-baseline" in str(e.value)
