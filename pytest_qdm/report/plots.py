"""PNG figures of a protocol report (matplotlib, "Agg" backend, imported on first use).

Each ``_plot_*`` function draws one titled, axis-labelled figure; :func:`plot_report`
saves them into a folder and closes every figure it opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_qdm.report import _breakdowns as breakdown
from pytest_qdm.report import _format as fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pytest_qdm.schema.protocol import ProtocolReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_survival_vs_bits(report: ProtocolReport, plt) -> Figure:
    rows = sorted((r for r in report.sweep if r.kind == "RTN"), key=lambda r: -r.bits)
    bits = np.array([r.bits for r in rows], dtype=float)

    def values(field: str) -> np.ndarray:
        return np.array([np.nan if getattr(r, field) is None else getattr(r, field) for r in rows])

    survived = values("survived_pct")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cis = [r.survived_ci or (None, None) for r in rows]
    if rows and all(v is not None for ci in cis for v in ci):
        low, high = np.array(cis, dtype=float).T
        err = np.array([survived - low, high - survived])
        ax.errorbar(
            bits,
            survived,
            yerr=np.clip(err, 0, None),
            fmt="o-",
            capsize=4,
            color="tab:green",
            label="survived % (95% CI)",
        )
    else:
        ax.plot(bits, survived, "o-", color="tab:green", label="survived %")
    ax.plot(bits, values("damaged_pct"), "s-", color="tab:red", label="damaged %")
    ax.set_xlabel("RTN bit width")
    ax.set_ylabel("% of active SAE features")
    ax.set_ylim(-2, 102)
    ax.set_xticks(bits, [f"INT{int(b)}" for b in bits])
    if len(bits) > 1:
        ax.set_xlim(bits.max() + 0.3, bits.min() - 0.3)  # fewer bits to the right
    twin = ax.twinx()
    twin.plot(
        bits,
        100 * values("ppl_chunked_change"),
        "^--",
        color="tab:blue",
        label="PPL change % (chunked)",
    )
    twin.axhline(0, color="tab:blue", linewidth=0.5, alpha=0.5)
    twin.set_ylabel("perplexity change vs reference (%)", color="tab:blue")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(
        handles[0] + extra[0],
        handles[1] + extra[1],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.15),
        ncol=3,
        fontsize=8,
    )
    ax.set_title(f"Feature survival vs bit width ({report.audit.hook_name})")
    return fig


def _plot_correlation_hist(report: ProtocolReport, plt) -> Figure:
    audit = report.audit
    active = audit.reference.active
    conditions = {n: c.correlation[active] for n, c in audit.conditions.items() if n != "reference"}
    conditions = {n: r[np.isfinite(r)] for n, r in conditions.items()}
    lowest = min((float(r.min()) for r in conditions.values() if r.size), default=0.0)
    low = min(lowest, audit.config.damage_threshold) - 0.02
    bins = np.linspace(max(low, -1.0), 1.0, 51)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in conditions.items():
        ax.hist(r, bins=bins, histtype="step", linewidth=1.5, label=f"{name} (n={r.size})")
    ax.axvline(audit.config.survival_threshold, color="gray", linestyle="--", linewidth=1)
    ax.axvline(audit.config.damage_threshold, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("stability score r (Pearson, reference vs compressed)")
    ax.set_ylabel("active features")
    ax.set_title(
        "Feature stability per condition (dashed: survival, dotted: damage threshold)", fontsize=10
    )
    if conditions:
        ax.legend(fontsize=8, loc="upper left")
    return fig


def _plot_survival_by_peak_quartile(report: ProtocolReport, plt) -> Figure:
    from pytest_qdm.analyse.predictor import quantile_bins

    audit, focus = report.audit, report.predictor_condition
    active = audit.reference.active
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if focus is not None and active.any():
        peak = audit.reference.max_activation[active]
        survived = audit.conditions[focus].correlation[active] > audit.config.survival_threshold
        edges, index = quantile_bins(peak, 4)
        counts = np.bincount(index, minlength=4)
        rates = np.bincount(index, weights=survived, minlength=4) / np.maximum(counts, 1)
        labels = [f"Q{k + 1}\n{edges[k]:.3g}–{edges[k + 1]:.3g}\nn={counts[k]}" for k in range(4)]
        ax.bar(range(4), np.where(counts > 0, 100 * rates, np.nan), color="tab:purple")
        ax.set_xticks(range(4), labels, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_xlabel("quartile of reference max activation")
    ax.set_ylabel("survived (% of active features)")
    ax.set_title(f"Survival by peak activation under {focus or fmt.MISSING}")
    return fig


def _plot_rtn_vs_pruning(report: ProtocolReport, plt) -> Figure:
    overlap, audit = report.overlap, report.audit
    active = audit.reference.active
    a = 1 - audit.conditions[overlap.label_a].correlation[active]
    b = 1 - audit.conditions[overlap.label_b].correlation[active]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(a, b, s=8, alpha=0.6, color="tab:orange")
    top = max(float(np.nanmax(a, initial=0)), float(np.nanmax(b, initial=0)), 1e-3) * 1.05
    ax.plot([0, top], [0, top], color="gray", linewidth=1, label="y = x")
    ax.set_xlim(-0.02 * top, top)
    ax.set_ylim(-0.02 * top, top)
    ax.set_xlabel(f"damage 1 - r under {overlap.label_a}")
    ax.set_ylabel(f"damage 1 - r under {overlap.label_b}")
    ax.set_title(f"RTN vs matched pruning (Spearman {fmt.num(overlap.spearman_damage)})")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _plot_lenses(report: ProtocolReport, plt) -> Figure:
    """Per condition: survival beside the token-level and SAE-transfer numbers (all 0..1)."""
    rows = [r for r in report.sweep if r.kind != "Reference"]
    series = {
        "survived (fraction of features)": [
            None if r.survived_pct is None else r.survived_pct / 100 for r in rows
        ],
        "sample r (per token)": [r.sample_correlation for r in rows],
        "top-k agreement": [r.topk_agreement for r in rows],
        "SAE explained variance": [r.sae_explained_variance for r in rows],
    }
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) + 3), 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(
            np.arange(len(rows)) + (i - (len(series) - 1) / 2) * width, heights, width, label=label
        )
    ax.set_xticks(
        range(len(rows)), [r.condition for r in rows], rotation=30, ha="right", fontsize=8
    )
    ax.set_ylim(min(0.0, *(v for vs in series.values() for v in vs if v is not None)), 1.05)
    ax.set_ylabel("value (1 = perfect agreement or reconstruction)")
    ax.set_title("Token averages hold while features fail: survival vs token-level lenses")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _plot_sae_pruning(report: ProtocolReport, plt) -> Figure:
    sweep = report.sae_pruning
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r.condition for r in sweep.rows)):
        rows = [r for r in sweep.rows if r.condition == name]
        removed = [100 * r.fraction for r in rows]
        color = f"C{i}"
        ev = [np.nan if r.explained_variance is None else r.explained_variance for r in rows]
        recovered = [np.nan if r.loss_recovered is None else r.loss_recovered for r in rows]
        ax.plot(removed, ev, "o-", color=color, label=f"explained variance, {name}")
        ax.plot(removed, recovered, "s--", color=color, label=f"loss recovered, {name}")
    ax.set_xlabel("SAE features removed (%), least important first")
    ax.set_ylabel("fraction (1 = perfect)")
    ax.set_title(f"SAE pruning without retraining\n{sweep.method}, {sweep.hook_name}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _plot_domain_survival(report: ProtocolReport, plt) -> Figure:
    """Survived % per condition, one bar per labelled domain."""
    names = breakdown.domains(report)
    rows = [r for r in report.sweep if r.kind != "Reference"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    width = 0.8 / len(names)
    x = np.arange(len(rows))
    for i, domain in enumerate(names):
        cells = [r.domains.get(domain) for r in rows]
        values = [np.nan if c is None or c.survived_pct is None else c.survived_pct for c in cells]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=domain)
    ax.set_xticks(x, [r.condition for r in rows], rotation=30, ha="right")
    ax.set_ylabel("survived % of the domain's active features")
    ax.set_ylim(0, 102)
    ax.set_title("Feature survival per text domain")
    ax.legend(title="domain")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_report(report: ProtocolReport, out_dir: Path) -> list[Path]:
    """Write the report's figures as PNG files into ``out_dir``; return their paths.

    survival_vs_bits.png, correlation_hist.png, survival_by_peak_quartile.png,
    rtn_vs_pruning_damage.png when the report has a pruning comparison, and
    lenses_vs_survival.png when it has token-level or SAE transfer numbers,
    sae_pruning.png when it has an SAE pruning sweep, and domain_survival.png when the
    tokens have labelled domains.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "survival_vs_bits.png": _plot_survival_vs_bits,
        "correlation_hist.png": _plot_correlation_hist,
        "survival_by_peak_quartile.png": _plot_survival_by_peak_quartile,
    }
    if report.overlap is not None:
        figures["rtn_vs_pruning_damage.png"] = _plot_rtn_vs_pruning
    if fmt.has_lenses(report):
        figures["lenses_vs_survival.png"] = _plot_lenses
    if report.sae_pruning is not None:
        figures["sae_pruning.png"] = _plot_sae_pruning
    if breakdown.domains(report):
        figures["domain_survival.png"] = _plot_domain_survival
    written = []
    for name, draw in figures.items():
        fig = draw(report, plt)
        try:
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
        finally:
            plt.close(fig)
        written.append(out_dir / name)
    return written
