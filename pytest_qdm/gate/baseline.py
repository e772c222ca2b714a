"""Fingerprints and baselines (pytest-regressions style).

A fingerprint names everything a result depends on: model and SAE weights, tokens, settings
and library versions. A baseline is a saved protocol report with its fingerprint; a run
compares against it only when the fingerprints agree.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from pytest_qdm.gate.thresholds import BASELINE_METRICS, BaselineCheck
from pytest_qdm.jsonfile import write_json
from pytest_qdm.schema.gate import Baseline, Fingerprint
from pytest_qdm.schema.protocol import ProtocolReport

LIBRARIES = ("pytest-qdm", "torch", "transformer-lens", "sae-lens", "numpy", "scikit-learn")


def state_sha256(module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def write_baseline(path: Path, fingerprint: Fingerprint, report: ProtocolReport) -> Path:
    return write_json(Baseline(fingerprint=fingerprint, report=report), path)


class BaselineRefused(ValueError):
    """A baseline made for other inputs, refused before the audit runs."""


def read_baseline(path: Path) -> Baseline:
    try:
        baseline = Baseline.model_validate_json(Path(path).read_text())
    except ValueError as error:
        raise ValueError(
            f"baseline {path} is not a pytest-qdm baseline ({error.__class__.__name__}); "
            "delete it or rerun with --qdm-update-baseline"
        ) from error
    check_schema(baseline, path)
    return baseline


def check_schema(baseline: Baseline, path: Path) -> None:
    """Refuse a baseline written by a newer pytest-qdm (its numbers may mean other things)."""
    from pytest_qdm.schema.protocol import SCHEMA_VERSION

    version = baseline.report.schema_version
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"baseline {path} has schema_version {version}, newer than this pytest-qdm's "
            f"{SCHEMA_VERSION}: upgrade pytest-qdm, or rerun with --qdm-update-baseline"
        )


def foreign_baseline(path: Path, differences: list[str]) -> str:
    return (
        f"baseline {path} refused, it was made for other inputs: "
        + "; ".join(differences)
        + ". Rerun with --qdm-update-baseline to replace it."
    )


def _metric(report: ProtocolReport, condition: str, metric: str) -> float | None:
    path = BASELINE_METRICS[metric]
    if "." in path:  # report-level metric, e.g. predictor.auc_mean
        owner, field = path.split(".")
        part = getattr(report, owner)
        return None if part is None else getattr(part, field)
    row = next((r for r in report.sweep if r.condition == condition), None)
    return None if row is None else getattr(row, path)


def compare(
    report: ProtocolReport,
    baseline: ProtocolReport,
    checks: list[BaselineCheck],
    paired: dict | None = None,
) -> list[str]:
    """Messages for every check the run fails against the baseline (empty: all fine).
    ``paired``: :func:`pytest_qdm.analyse.paired.paired_changes` by condition, which a
    ``:significant`` check also requires to reject no change."""
    failures = []
    shared = [
        r.condition for r in report.sweep if any(b.condition == r.condition for b in baseline.sweep)
    ]
    for check in checks:
        report_level = "." in BASELINE_METRICS[check.metric]
        names = ["report"] if report_level else [check.condition] if check.condition else shared
        for name in names:
            message = check.compare(
                name, _metric(report, name, check.metric), _metric(baseline, name, check.metric)
            )
            if message and check.significant:
                message = significant_only(message, check, (paired or {}).get(name))
            if message:
                failures.append(message)
    return failures


def significant_only(message: str, check: BaselineCheck, change) -> str | None:
    """``message`` with its paired p-value when the paired test rejects no change at 0.05;
    None when it does not; a failure when no paired test was possible."""
    from pytest_qdm.gate.thresholds import PAIRED_TESTS

    if change is None:
        return f"{message}: no paired test (the baseline was not measured on these tokens)"
    p = getattr(change, PAIRED_TESTS[check.metric])
    if p is None or p >= SIGNIFICANCE:
        return None
    return f"{message}, significant (paired p={p:.3g} < {SIGNIFICANCE})"


SIGNIFICANCE = 0.05
