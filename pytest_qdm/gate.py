"""The compression gate of one test session, independent of pytest.

A :class:`GateSession` loads the model, SAE(s) and tokens the options name (once), runs the
protocol (once; cached on disk by fingerprint and guarded by a file lock, so parallel
workers share one run), judges the gate thresholds and the baseline, and writes the
reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .baseline import (
    Fingerprint,
    compare,
    library_versions,
    read_baseline,
    state_sha256,
    write_baseline,
)
from .config import QdmOptions
from .protocol import ProtocolConfig, ProtocolReport
from .results import AuditResult
from .thresholds import GateCheck

LOCK_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    message: str


@dataclass
class Subject:
    """What is audited: model, read-out SAE, optional second-layer SAE, tokens."""

    name: str
    sae_name: str
    model: object
    sae: object
    second_sae: object | None
    tokens: object  # data.TokenSet


def _is_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def load_subject(options: QdmOptions) -> Subject:
    """Load what the options name: a preset, or a model plus ``--qdm-sae``."""
    from .data import load_tokens, prepend_bos_from_sae
    from .loading import load_model, load_preset, load_sae
    from .presets import get_preset, preset_names

    spec = options.model
    preset = get_preset(spec) if spec in preset_names() else None
    second = None
    if preset is not None:
        loaded = load_preset(preset, device=options.device, dtype=options.dtype)
        model, sae, sae_name = loaded.model, loaded.sae, f"{preset.sae_release}/{preset.sae_id}"
        second = next((s for h, s in loaded.saes.items() if h != preset.hook_name), None)
    else:
        model = load_model(spec, device=options.device, dtype=options.dtype)
    if options.sae:
        sae, sae_name, second = load_sae(options.sae, device=options.device), options.sae, None
    elif preset is None:
        raise ValueError(f"--qdm-model {spec!r} is not a preset: name its SAE with --qdm-sae")
    context = options.context_length or (
        preset.context_length if preset else min(model.cfg.n_ctx, 256)
    )
    tokens = load_tokens(
        options.dataset or (preset.dataset if preset else "builtin"),
        model.tokenizer,
        context_length=min(context, model.cfg.n_ctx),
        max_tokens=options.tokens or (preset.token_budget if preset else 50_000),
        prepend_bos=prepend_bos_from_sae(sae, default=preset.prepend_bos if preset else False),
    )
    return Subject(spec, sae_name, model, sae, second, tokens)


@dataclass
class GateSession:
    options: QdmOptions
    _audits: dict[tuple, AuditResult] = field(default_factory=dict)
    _protocol: ProtocolReport | None = None

    @cached_property
    def subject(self) -> Subject:
        return load_subject(self.options)

    @cached_property
    def protocol_config(self) -> ProtocolConfig:
        options = self.options
        return ProtocolConfig(
            sae_transfer="transfer" in options.lenses,
            sae_prune_fractions=options.sae_prune,
            sae_prune_method=options.sae_prune_method,
        )

    @cached_property
    def fingerprint(self) -> Fingerprint:
        s, options = self.subject, self.options
        settings = {
            "audit": json.loads(options.audit_config().model_dump_json(exclude={"progress"})),
            "protocol": json.loads(self.protocol_config.model_dump_json()),
            "bits": list(options.bits),
            "match_bits": options.match_bits,
            "schemes": list(options.schemes),
        }
        from .auditing import token_summary

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

    def protocol(self) -> ProtocolReport:
        """The protocol report: from the cache when this fingerprint ran before."""
        if self._protocol is not None:
            return self._protocol
        if not self.options.cache:
            report = self._run_protocol()
        else:
            from filelock import FileLock

            cache = Path(self.options.cache_dir)
            cache.mkdir(parents=True, exist_ok=True)
            path = cache / f"protocol-{self.fingerprint.key()}.json"
            with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
                if path.exists():
                    report = ProtocolReport.from_json(path.read_text())
                else:
                    from .report import write_json

                    report = self._run_protocol()
                    write_json(report, path)
        self._protocol = report
        return report

    def _run_protocol(self) -> ProtocolReport:
        from .protocol import run_protocol
        from .schemes import scheme_condition

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
            extra_conditions=[scheme_condition(name) for name in self.options.schemes],
        )

    def audit(self, bits=None, tokens=None, **overrides) -> AuditResult:
        """The session's audit; per-test settings (a ``qdm`` marker) get their own run."""
        if bits is None and tokens is None and not overrides:
            return self.protocol().audit
        key = (tuple(bits or self.options.bits), tokens, tuple(sorted(overrides.items())))
        if key not in self._audits:
            from .auditing import audit
            from .compress import RTN

            config = self.options.audit_config().model_copy(update=overrides)
            token_rows = self.subject.tokens.tokens
            if tokens:
                token_rows = token_rows[: max(1, -(-tokens // token_rows.shape[1]))]
            conditions = [RTN(b) for b in key[0]]
            self._audits[key] = audit(
                self.subject.model, self.subject.sae, token_rows, conditions, config
            )
        return self._audits[key]


def gate_verdicts(report: ProtocolReport, gates: tuple[GateCheck, ...]) -> list[Verdict]:
    verdicts = []
    for gate in gates:
        names = (
            [r.condition for r in report.sweep if r.kind == "RTN"]
            if gate.condition == "*"
            else [gate.condition]
        )
        for name in names:
            row = next((r for r in report.sweep if r.condition == name), None)
            if row is None:
                verdicts.append(
                    Verdict(
                        gate.option,
                        False,
                        f"{name} was not audited (see --qdm-bits, --qdm-schemes)",
                    )
                )
                continue
            passed, message = gate.describe(getattr(row, gate.metric))
            verdicts.append(Verdict(f"{gate.option} {name}", passed, message))
    return verdicts


def baseline_verdicts(
    session: GateSession, report: ProtocolReport, regen: bool = False
) -> list[Verdict]:
    """pytest-regressions flow: write when missing, refuse a foreign one, compare otherwise."""
    options = session.options
    if not options.baseline:
        return []
    path = Path(options.baseline)
    fingerprint = session.fingerprint
    if not path.exists() or regen:
        write_baseline(path, fingerprint, report)
        return [
            Verdict(
                "baseline", False, f"baseline written to {path}; commit it and rerun to compare"
            )
        ]
    saved = read_baseline(path)
    differences = fingerprint.differences(saved.fingerprint)
    if differences:
        if options.update_baseline:
            write_baseline(path, fingerprint, report)
            return [
                Verdict("baseline", False, f"baseline {path} rewritten (it was for other inputs)")
            ]
        return [
            Verdict(
                "baseline",
                False,
                f"baseline {path} refused, it was made for other inputs: "
                + "; ".join(differences)
                + ". Rerun with --qdm-update-baseline to replace it.",
            )
        ]
    failures = compare(report, saved.report, list(options.baseline_checks))
    if failures and options.update_baseline:
        write_baseline(path, fingerprint, report)
        failures.append(f"baseline {path} rewritten with this run")
    return [Verdict("baseline", not failures, "; ".join(failures) or f"within {path}")]


def write_outputs(
    report: ProtocolReport, verdicts: list[Verdict], options: QdmOptions
) -> list[Path]:
    """JSON report, verdicts, markdown, plots; markdown also to $GITHUB_STEP_SUMMARY."""
    from .report import append_github_step_summary, markdown_summary, plot_report, write_json

    out = Path(options.report_dir)
    rows = [(v.name, v.passed, v.message) for v in verdicts]
    written = [write_json(report, out / "qdm-report.json")]
    (out / "verdicts.json").write_text(json.dumps(rows, indent=1))
    markdown = markdown_summary(report, rows)
    (out / "qdm-summary.md").write_text(markdown)
    written += [out / "verdicts.json", out / "qdm-summary.md"]
    if options.plots:
        written += plot_report(report, out)
    append_github_step_summary(markdown, os.environ)
    return written
