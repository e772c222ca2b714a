"""Key metrics as flat (name, value) pairs for pytest's ``record_property`` (JUnit XML).

The naming scheme (stable) is in docs/report.md, "JUnit properties".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pytest_qdm.report.retrain import retrain_properties
from pytest_qdm.schema.metrics import ROW_PROPERTIES

if TYPE_CHECKING:
    from pytest_qdm.schema.audit import AuditResult
    from pytest_qdm.schema.gate import Fingerprint
    from pytest_qdm.schema.protocol import ProtocolReport

Property = tuple[str, str | float | int]

_ROW_FIELDS = ROW_PROPERTIES
_SUMMARY_FIELDS = {
    "n_active": "n_active",
    "survived_pct": "survived_pct",
    "degraded_pct": "degraded_pct",
    "damaged_pct": "damaged_pct",
    "survived_count": "survived_count",
    "degraded_count": "degraded_count",
    "damaged_count": "damaged_count",
    "mean_r": "mean_correlation",
    "median_r": "median_correlation",
    "silenced_count": "silenced_count",
    "emergent_count": "emergent_count",
}
_DOMAIN_FIELDS = {
    "n_active": "n_active",
    "survived_pct": "survived_pct",
    "degraded_pct": "degraded_pct",
    "damaged_pct": "damaged_pct",
    "mean_r": "mean_correlation",
    "ppl_chunked": "ppl_chunked",
    "ppl_chunked_change": "ppl_chunked_change",
}


def _value(value: object) -> str | float | int | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def _emit(prefix: str, items: Iterable[tuple[str, object]]) -> list[Property]:
    pairs = ((f"{prefix}.{name}", _value(value)) for name, value in items)
    return [(name, value) for name, value in pairs if value is not None]


def _fields(prefix: str, source: object, fields: dict[str, str]) -> list[Property]:
    return _emit(prefix, ((name, getattr(source, attr)) for name, attr in fields.items()))


def _conditions(report: ProtocolReport) -> list[Property]:
    spreads = report.stability.budget.spread, report.stability.subsets.spread
    out: list[Property] = []
    for row in report.sweep:
        prefix = f"qdm.{row.condition}"
        low, high = row.survived_ci or (None, None)
        out += _fields(prefix, row, _ROW_FIELDS)
        out += _emit(
            prefix,
            [
                ("survived_ci_low", low),
                ("survived_ci_high", high),
                ("budget_spread_pp", spreads[0].get(row.condition)),
                ("subsets_spread_pp", spreads[1].get(row.condition)),
            ],
        )
        for domain, cell in row.domains.items():
            out += _fields(f"{prefix}@{domain}", cell, _DOMAIN_FIELDS)
    return out


def _analyses(report: ProtocolReport) -> list[Property]:
    p = report.predictor
    out = _emit(
        "qdm.predictor",
        [
            ("status", p.status),
            ("auc", p.auc_mean),
            ("auc_std", p.auc_std),
            ("n_features", p.n_features),
            ("n_survived", p.n_survived),
        ],
    )
    if (m := report.pruning) is not None:
        out += _emit(
            "qdm.pruning",
            [
                ("sparsity", m.sparsity),
                ("target_ppl", m.target),
                ("achieved_ppl", m.achieved),
                ("rel_error", m.rel_error),
                ("steps", len(m.steps)),
                ("converged", m.converged),
                ("monotone", m.monotone),
            ],
        )
    if (sweep := report.sae_pruning) is not None:
        for row in sweep.rows:
            out += _emit(
                f"qdm.sae_prune.{row.fraction:g}.{row.condition}",
                [("sae_ev", row.explained_variance), ("loss_recovered", row.loss_recovered)],
            )
    if (sens := report.sensitivity) is not None:
        for b in sens.blocks:
            out += _emit(
                f"qdm.sensitivity.block{b.block}",
                [
                    ("survived_pct", b.survived_pct),
                    ("mean_r", b.mean_correlation),
                    ("ppl_chunked_change", b.ppl_chunked_change),
                ],
            )
        plan = sens.plan
        out += _emit(
            "qdm.sensitivity.plan",
            [
                ("survived_pct", plan.survived_pct),
                ("mean_r", plan.mean_correlation),
                ("ppl_chunked_change", plan.ppl_chunked_change),
                ("predicted_survived_pct", plan.predicted_survived_pct),
                ("n_raised", len(plan.raised_blocks)),
                ("target_met", plan.target_met),
            ],
        )
    if (o := report.overlap) is not None:
        names = ("jaccard_not_survived", "jaccard_damaged", "pearson_damage", "spearman_damage")
        out += _fields("qdm.overlap", o, {n: n for n in names})
    return out


def _checks(report: ProtocolReport) -> list[Property]:
    s = report.stability
    out: list[Property] = []
    if s.null is not None:
        out += _fields(
            "qdm.null", s.null, {"passed": "passed", "max_abs_deviation": "max_abs_deviation"}
        )
    if (fit := getattr(report, "sae_fit", None)) is not None:
        out += _fields("qdm.sae_fit", fit, {"ok": "ok", "explained_variance": "explained_variance"})
    if s.second_layer is not None:
        for name, cond in s.second_layer.conditions.items():
            out += _emit(f"qdm.second_layer.{name}", [("survived_pct", cond.summary.survived_pct)])
    return out


def junit_properties(report: ProtocolReport) -> list[Property]:
    """The report's key metrics as (name, value) pairs (see the module docstring)."""
    audit = report.audit
    return [
        *_conditions(report),
        *_analyses(report),
        *_checks(report),
        *retrain_properties(report),
        *_emit(
            "qdm",
            [
                ("n_active", audit.reference.n_active),
                ("n_tokens", audit.tokens.n_tokens),
                ("findings", len(report.findings)),
                ("elapsed_seconds", report.elapsed_seconds),
            ],
        ),
    ]


def suite_properties(
    report: ProtocolReport, fingerprint: Fingerprint, cached: bool, version: str
) -> list[Property]:
    """The run's metadata, for the JUnit ``<testsuite>`` properties (``version``: pytest-qdm's)."""
    pairs = [
        ("model", fingerprint.model),
        ("sae", fingerprint.sae),
        ("hook", fingerprint.hook),
        ("n_tokens", report.audit.tokens.n_tokens),
        ("tokens_sha256", fingerprint.tokens_sha256),
        ("fingerprint", fingerprint.key()),
        ("cached", cached),
        ("version", version),
    ]
    return _emit("qdm", pairs)


def audit_properties(result: AuditResult, condition: str) -> list[tuple[str, float | int]]:
    """The bands of one condition of a bare audit, as ``qdm.<condition>.<metric>`` pairs."""
    if condition not in result.conditions:
        raise ValueError(
            f"condition {condition!r} is not in the audit; it has {sorted(result.conditions)}"
        )
    cond = result.conditions[condition]
    out = _fields(f"qdm.{condition}", cond.summary, _SUMMARY_FIELDS)
    for domain, summary in cond.domains.items():
        out += _fields(f"qdm.{condition}@{domain}", summary, _SUMMARY_FIELDS)
    return out  # type: ignore[return-value]
