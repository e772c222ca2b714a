"""The compression gate of one test session, independent of pytest.

A :class:`GateSession` loads the model, SAE(s) and tokens the options name (once), runs the
protocol (once; cached on disk by fingerprint and guarded by a file lock, so parallel
workers share one run), judges the gate thresholds and the baseline, and writes the
reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from pathlib import Path

from pytest_qdm.compress.names import BIT_WIDTHS, valid_bits
from pytest_qdm.gate.baseline import (
    library_versions,
    state_sha256,
)
from pytest_qdm.gate.cache import (
    cache_path,
    cached_report,
    remember_sources,
    remembered_fingerprint,
)
from pytest_qdm.gate.sources import sources_key
from pytest_qdm.gate.subject import Subject, load_subject
from pytest_qdm.options import QdmOptions
from pytest_qdm.options_parse import validated_overrides
from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.gate import Fingerprint
from pytest_qdm.schema.protocol import ProtocolReport
from pytest_qdm.settings import ProtocolConfig
from pytest_qdm.stream.distributed import agreed, from_main, init_from_torchrun

SENSITIVITY_FIELDS = {"sensitivity", "sensitivity_target", "sensitivity_max_raised"}
RETRAIN_FIELDS = {"retrain_tokens", "retrain_init", "retrain_condition"}
# settings that never change a number (two-phase gives the one-phase numbers bit for bit):
# out of the fingerprint, so either mode reuses the other's cached results and baselines
NOT_FINGERPRINTED = {"progress", "two_phase", "two_phase_dir", "two_phase_keep"}


@dataclass
class GateSession:
    options: QdmOptions
    _audits: dict[tuple, AuditResult] = field(default_factory=dict)
    _protocol: ProtocolReport | None = None
    cache_hit: bool = False
    _verdicts: list | None = None
    _claims: object | None = None
    _provenance: dict | None = None

    @cached_property
    def subject(self) -> Subject:
        init_from_torchrun()  # before loading: each rank's model goes to its own GPU
        return load_subject(self.options)

    @cached_property
    def sources(self) -> str | None:
        """The run's inputs digested from files (gate/sources.py); None for Hub sources."""
        return sources_key(self.options)

    @cached_property
    def protocol_config(self) -> ProtocolConfig:
        options = self.options
        return ProtocolConfig(
            ppl_tokens=options.perplexity_tokens,
            sae_transfer="transfer" in options.lenses,
            sae_prune_fractions=options.sae_prune,
            sae_prune_method=options.sae_prune_method,
            sensitivity=options.sensitivity,
            sensitivity_target=options.sensitivity_target,
            retrain_tokens=options.retrain_sae,
            retrain_init=options.retrain_init,
            retrain_condition=options.retrained_condition,
            min_explained_variance=options.min_explained_variance,
            confidence=options.confidence,
        )

    @cached_property
    def fingerprint(self) -> Fingerprint:
        s, options = self.subject, self.options
        settings = {
            "audit": json.loads(options.audit_config().model_dump_json(exclude=NOT_FINGERPRINTED)),
            # sensitivity or retraining off: its fields stay out, so fingerprints (caches,
            # baselines) made before the option existed still match
            "protocol": json.loads(
                self.protocol_config.model_dump_json(
                    exclude=(set() if options.sensitivity else SENSITIVITY_FIELDS)
                    | (set() if options.retrain_sae else RETRAIN_FIELDS)
                )
            ),
            "bits": list(options.bits),
            "match_bits": options.match_bits,
            "schemes": list(options.audited_schemes),
            "candidates": [
                {
                    **c.describe().model_dump(exclude={"checkpoint"}),
                    "path": c.checkpoint.path,  # dequantize or forward: not the same numbers
                    "sha256": state_sha256(c.model),
                }
                for c in s.candidates
            ],
        }
        from pytest_qdm.run.audit import token_summary

        return Fingerprint(
            model=s.name,
            model_sha256=state_sha256(s.model),
            sae=s.sae_name,
            sae_sha256=state_sha256(s.sae),
            hook=options.hook or s.sae.cfg.metadata.hook_name,
            tokens_sha256=token_summary(s.tokens.tokens).sha256,
            corpus_sha256=getattr(s.tokens.info, "corpus_sha256", None),
            settings=json.dumps(settings, sort_keys=True),
            versions=library_versions(),
        )

    def judged(self) -> tuple[ProtocolReport, list]:
        """The report and every verdict (gate thresholds, baseline), with the output files
        written once."""
        if self._verdicts is None:
            from pytest_qdm.gate.outputs import write_outputs
            from pytest_qdm.gate.verdicts import baseline_verdicts, gate_verdicts

            report = self.reported()

            def judge_and_write() -> list:
                verdicts = gate_verdicts(report, self.options.gates, self.options.gate_on)
                verdicts += baseline_verdicts(self.options, self.fingerprint, report)
                write_outputs(report, verdicts, self.options, self.provenance())
                return verdicts

            # under torchrun rank 0 judges and writes; every rank gets its verdicts
            self._verdicts = from_main(judge_and_write)
        return self.reported(), self._verdicts

    def reported(self) -> ProtocolReport:
        """The protocol report with the --qdm-claims results (docs/claims.md) attached."""
        if not self.options.claims:
            return self.protocol()
        if self._claims is None:
            from pytest_qdm.claims.session import session_claims

            self._claims = from_main(partial(session_claims, self))
        return self.protocol().model_copy(update={"claims": self._claims})

    def outcome(self) -> dict | None:
        """This run's own result for the end-of-session summary (report, verdict rows,
        provenance), held in memory; None before the gate was judged."""
        if self._verdicts is None:
            return None
        rows = [(v.name, v.passed, v.message) for v in self._verdicts]
        return {"report": self.reported(), "verdicts": rows, "provenance": self.provenance()}

    def provenance(self) -> dict:
        """Where the report came from, for the summary and run.json (taken once, when the
        gate is judged, so both say the same)."""
        if self._provenance is not None:
            return self._provenance
        info = {"cached": self.cache_hit}
        if self.options.cache:
            path = cache_path(self.options.cache_dir, self.fingerprint.key())
            info["fingerprint"] = self.fingerprint.key()
            if self.cache_hit and path.exists():
                info["cached_at"] = datetime.fromtimestamp(path.stat().st_mtime).isoformat(
                    sep=" ", timespec="seconds"
                )
        self._provenance = info
        return info

    def protocol(self) -> ProtocolReport:
        """The protocol report: from the cache when this fingerprint ran before."""
        if self._protocol is None:
            # under torchrun every rank computes, and a failure on any rank ends every rank
            compute = partial(agreed, self._run_protocol)
            if not self.options.cache:
                self._protocol = compute()
            elif (known := self._from_sources_cache()) is not None:
                self._protocol, self.cache_hit = known, True
            else:
                key = self.fingerprint.key()
                self._protocol, self.cache_hit = cached_report(self.options.cache_dir, key, compute)
                remember_sources(self.options.cache_dir, self.sources, self.fingerprint)
        return self._protocol

    def _from_sources_cache(self) -> ProtocolReport | None:
        """The cached report of a run with the same input files and options, found without
        loading the model, SAE or tokens (gate/sources.py); None if there is none."""
        known = remembered_fingerprint(self.options.cache_dir, self.sources)
        if known is None:
            return None
        from pytest_qdm.cachefiles import read_checked

        path = cache_path(self.options.cache_dir, known.key())
        report = read_checked(path, known.key(), ProtocolReport)
        if report is not None:
            self.__dict__["fingerprint"] = known  # the cached_property, without loading
        return report

    def _run_protocol(self) -> ProtocolReport:
        from pytest_qdm.compress.schemes import scheme_condition
        from pytest_qdm.gate.subject import floors_for
        from pytest_qdm.run.protocol import run_protocol

        self._refuse_foreign_baseline()
        s = self.subject
        return run_protocol(
            s.model,
            s.sae,
            s.tokens,
            bits=self.options.bits,
            match_bits=self.options.match_bits,
            config=self.options.audit_config(),
            protocol=self.protocol_config,
            second_sae=s.second_sae,
            extra_conditions=[
                *(scheme_condition(name) for name in self.options.audited_schemes),
                *s.candidates,
                *floors_for(self.options, s.model),
            ],
            # finished work survives a killed run: the rerun continues from it
            checkpoints=Path(self.options.cache_dir) / f"partial-{self.fingerprint.key()}"
            if self.options.cache
            else None,
        )

    def _refuse_foreign_baseline(self) -> None:
        """Before the audit: a baseline made for other inputs fails the run now, naming what
        differs, not after the work (BaselineRefused, one line)."""
        options = self.options
        path = Path(options.baseline) if options.baseline else None
        if path is None or options.update_baseline or not path.is_file():
            return
        from pytest_qdm.gate.baseline import BaselineRefused, foreign_baseline, read_baseline

        differences = self.fingerprint.differences(read_baseline(path).fingerprint)
        if differences:
            raise BaselineRefused(foreign_baseline(path, differences))

    def audit(self, bits=None, tokens=None, **overrides) -> AuditResult:
        """The session's audit; per-test settings (a ``qdm`` marker) get their own run."""
        if bits is None and tokens is None and not overrides:
            return self.protocol().audit
        config = marker_config(self.options, overrides)
        key = (marker_bits(bits) or self.options.bits, tokens, tuple(sorted(overrides.items())))
        if key not in self._audits:
            from pytest_qdm.compress.conditions import RTN
            from pytest_qdm.run.audit import audit

            token_rows = self.subject.tokens.tokens
            if tokens:
                token_rows = token_rows[: max(1, -(-tokens // token_rows.shape[1]))]
            conditions = [RTN(b) for b in key[0]]
            self._audits[key] = audit(
                self.subject.model, self.subject.sae, token_rows, conditions, config
            )
        return self._audits[key]


MARKER_KEYS = ("bits", "tokens")


def marker_config(options: QdmOptions, overrides: dict):
    """The AuditConfig that ``@pytest.mark.qdm(**overrides)`` asks for, validated."""
    return validated_overrides(
        options.audit_config(), overrides, "@pytest.mark.qdm", also=MARKER_KEYS
    )


def marker_bits(bits) -> tuple[int, ...]:
    """``bits=6`` or ``bits=[8, 6]`` of a ``qdm`` marker as a tuple (empty: not given)."""
    values = () if bits is None else (bits,) if isinstance(bits, int) else tuple(bits)
    if not all(valid_bits(b) for b in values):
        raise ValueError(f"@pytest.mark.qdm: bits must be integers in {BIT_WIDTHS}, got {bits!r}")
    return values


def check_marker(options: QdmOptions, kwargs: dict) -> None:
    """Refuse a bad ``qdm`` marker before any model loads (ValueError, one line; a
    misspelled keyword is answered with the closest valid one)."""
    marker_bits(kwargs.get("bits"))
    tokens = kwargs.get("tokens")
    if tokens is not None and (not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"@pytest.mark.qdm: tokens must be a positive integer, got {tokens!r}")
    marker_config(options, {k: v for k, v in kwargs.items() if k not in MARKER_KEYS})
